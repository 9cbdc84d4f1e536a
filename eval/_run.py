"""One evaluation run: fix the targets, score the teachers (the ceiling) and, given a checkpoint, the student."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from mt2kd.errors import ConfigError
from mt2kd.eval._config import EvalConfig
from mt2kd.eval._inputs import (
    clip_outputs,
    load_cuts,
    merge_repeat_copies,
    speakers,
    spec_dims,
)
from mt2kd.eval._scoring import Scores, Targets, build_labels, build_trials, json_ready, score_speakers, score_tagging

if TYPE_CHECKING:
    from mt2kd.store import ReadableStore

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Evaluation:
    """The report of a run, plus per-model curves for plotting."""

    report: dict[str, Any]  # JSON-ready: config, counts, labels, trials, teachers, student
    tagging: dict[str, Scores]  # model name ("student", teacher name) -> mAP scores
    speaker: dict[str, Scores]  # model name -> EER scores


def evaluate(config: EvalConfig) -> Evaluation:
    """Score the teachers from the store and, when ``config.checkpoint`` is set, the student.

    Examples
    --------
    >>> ev = evaluate(EvalConfig(cuts=("dev.jsonl.gz",), stores=("dev.zarr",)))  # doctest: +SKIP
    >>> ev.report["teachers"]["beats"]["map"]  # doctest: +SKIP
    0.47
    """
    cuts = load_cuts(config.cuts, config.max_cuts)
    if not cuts:
        raise ConfigError(f"the manifests must hold at least one cut. Got none in {list(config.cuts)}.")
    from mt2kd.store import open_view  # zarr loads only when a run starts

    store = open_view(config.stores)
    cuts, merged = merge_repeat_copies(cuts, store)
    cut_ids = [cut.id for cut in cuts]
    _check_coverage(config, store, cut_ids)
    teacher_logits = clip_outputs(store, cut_ids, config.tagging_teacher)
    teacher_embeddings = clip_outputs(store, cut_ids, config.speaker_teacher)
    student = _run_student(config, cuts, store) if config.checkpoint else None
    num_classes = _num_classes(config, store, student)
    targets = _targets(config, cuts, num_classes, teacher_logits)

    tagging = {config.tagging_teacher: score_tagging(teacher_logits, targets)}
    speaker = {config.speaker_teacher: score_speakers(teacher_embeddings, targets)}
    report = _report_head(config, cuts, store, targets, teacher_logits, teacher_embeddings)
    report["counts"]["num_repeat_copies_merged"] = len(merged)
    report["teachers"] = {config.tagging_teacher: {"map": tagging[config.tagging_teacher].summary},
                          config.speaker_teacher: {"eer": speaker[config.speaker_teacher].summary}}
    if student is not None:
        tagging["student"] = score_tagging(student.at_logits, targets)
        speaker["student"] = score_speakers(student.sv_embeddings, targets)
        report["student"] = {"kd_l1": student.kd_l1_summary(config.frames_teacher),
                             "targets": student.target_scores.summary(),
                             "map": tagging["student"].summary, "eer": speaker["student"].summary,
                             "model": student.info}
    # full per-class lists go last: the table leaves them out, the JSON keeps them for analysis
    report["per_class_ap"] = {name: s.per_class_ap for name, s in tagging.items() if s.per_class_ap is not None}
    report = json_ready(report)
    return Evaluation(report, tagging, speaker)


def _check_coverage(config: EvalConfig, store: ReadableStore, cut_ids: list[str]) -> None:
    """Refuse stores that hold none of the cuts (training's rule) when they are all there is to score.

    A student is scored on its own (mAP from event labels, EER from speaker
    trials) on held-out cuts no store needs to hold: then only a warning.
    """
    if not any(cut_id in store for cut_id in cut_ids):
        if config.checkpoint:
            log.warning("the stores %s hold none of the %d cuts of %s: the teachers and the student's KD L1 go "
                        "unscored", list(config.stores), len(cut_ids), list(config.cuts))
            return
        raise ConfigError(
            f"the stores {list(config.stores)} must hold teacher outputs for the cuts of {list(config.cuts)}. "
            f"Got none of their {len(cut_ids)} cuts: are these the stores extracted from these manifests?"
        )


def _run_student(config: EvalConfig, cuts: list[Any], store: ReadableStore) -> Any:
    from mt2kd.eval._student import run_student  # torch is imported only when a student is evaluated

    return run_student(config, cuts, store)


def _num_classes(config: EvalConfig, store: ReadableStore, student: Any) -> int | None:
    """Width of the tagging output; None when neither the store nor a student has one (mAP is skipped)."""
    dims = spec_dims(store)
    if config.tagging_teacher in dims:
        return dims[config.tagging_teacher]
    if student is not None and student.num_classes:
        return int(student.num_classes)
    return None


def _targets(config: EvalConfig, cuts: list[Any], num_classes: int | None,
             teacher_logits: dict[str, np.ndarray]) -> Targets:
    label_cut_ids, labels, label_info = build_labels(
        cuts, num_classes, config.labels, teacher_logits, config.pseudo_label_threshold)
    trials, trial_info = build_trials(
        cuts, config.trials, config.num_target_trials, config.num_nontarget_trials, config.seed)
    return Targets(label_cut_ids, labels, label_info, trials, trial_info)


def _report_head(config: EvalConfig, cuts: list[Any], store: ReadableStore, targets: Targets,
                 teacher_logits: dict, teacher_embeddings: dict) -> dict[str, Any]:
    cut_ids = [cut.id for cut in cuts]
    counts = {
        "num_cuts": len(cuts),
        "num_cuts_in_store": sum(cut_id in store for cut_id in cut_ids),
        "num_cuts_with_speaker": len(speakers(cuts)),
        "num_cuts_labelled": len(targets.label_cut_ids),
        f"num_cuts_with_{config.tagging_teacher}": len(teacher_logits),
        f"num_cuts_with_{config.speaker_teacher}": len(teacher_embeddings),
        "hours": sum(cut.duration for cut in cuts) / 3600.0,
    }
    head: dict[str, Any] = {"random_teachers": False}
    random = store.random_teacher_urls()
    if random:  # first in the table: every number below is of untrained teachers
        head = {"random_teachers": True,
                "random_teachers_note": f"random teacher weights in {', '.join(random)}; their outputs are for "
                                        f"tests and demos, not real labels, and so are these scores"}
    return {**head, "config": config.to_dict(), "counts": counts, "labels": targets.label_info,
            "trials": targets.trial_info}
