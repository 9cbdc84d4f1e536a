"""Shared scoring of any model's outputs (student or teacher) against one set of targets.

The targets (event labels and trials) are fixed once per run, so the student
and the teachers are scored on exactly the same cuts and trials wherever both
have outputs; the counts in each result say how many took part.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mt2kd.cuts import canonical_cut_id
from mt2kd.eval._inputs import audio_paths, event_targets, has_events, sigmoid, speakers
from mt2kd.eval._speaker import DetCurve, cosine_scores, det_curve, eer
from mt2kd.eval._tagging import load_label_list, mean_average_precision
from mt2kd.eval._trials import (
    Trial,
    is_voxceleb_list,
    make_trials,
    match_voxceleb_trials,
    read_trials,
    read_voxceleb_trials,
)

LABELS_FROM_EVENTS = "events"  # cut.custom["events"]
LABELS_FROM_TEACHER = "teacher_pseudo_labels"  # thresholded teacher probabilities


@dataclasses.dataclass(frozen=True)
class Targets:
    """Event labels and speaker trials that every model in a run is scored on."""

    label_cut_ids: list[str]  # cuts with labels, in the row order of `labels`
    labels: np.ndarray  # [num_labelled, num_classes] multi-hot
    label_info: dict[str, Any]  # where the labels came from, for the report
    trials: list[Trial]  # (enroll, test, is_target)
    trial_info: dict[str, Any]  # where the trials came from, for the report


@dataclasses.dataclass
class Scores:
    """A model's report entries plus the curves behind them (for plots)."""

    summary: dict[str, Any]  # JSON-ready numbers and counts
    per_class_ap: np.ndarray | None = None  # [num_classes]; NaN where a class has no positive
    det: DetCurve | None = None  # DET curve of the trials


def build_labels(cuts: Sequence[Any], num_classes: int | None, label_file: str | None,
                 teacher_logits: Mapping[str, np.ndarray], threshold: float
                 ) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    """Labels from the cuts' events when any cut has them, else the teacher's thresholded outputs."""
    if num_classes is None:  # no tagging teacher in the store and no student: nothing to score
        return [], np.zeros((0, 0), dtype=bool), {"source": None, "num_cuts_labelled": 0,
                                                   "reason": "neither the store nor a student has tagging outputs"}
    label_index = load_label_list(label_file) if label_file else None
    if any(has_events(cut) for cut in cuts):
        cut_ids, labels = event_targets(cuts, num_classes, label_index, label_file)
        info: dict[str, Any] = {"source": LABELS_FROM_EVENTS, "label_file": label_file}
    else:
        cut_ids = [cut.id for cut in cuts if cut.id in teacher_logits]
        logits = np.stack([teacher_logits[c] for c in cut_ids]) if cut_ids else np.zeros((0, num_classes))
        labels = sigmoid(logits) > threshold
        info = {"source": LABELS_FROM_TEACHER, "threshold": threshold,
                "note": "no cut has event labels: the tagging teacher's sigmoid outputs above the threshold "
                        "serve as labels, so the teacher's own mAP is 1.0 by construction"}
    info.update(_class_counts(num_classes, label_index), num_cuts_labelled=len(cut_ids),
                num_positive_labels=int(labels.sum()))
    return cut_ids, labels, info


def _class_counts(num_outputs: int, label_index: dict[str, int] | None) -> dict[str, Any]:
    """``num_classes`` as the label list counts them (else the tagging outputs), and the output width."""
    if label_index is None:
        return {"num_classes": num_outputs, "num_outputs": num_outputs}
    num_listed = len(set(label_index.values()))
    counts: dict[str, Any] = {"num_classes": num_listed, "num_outputs": num_outputs}
    if num_listed != num_outputs:
        counts["classes_note"] = (f"the label list names {num_listed} classes and the tagging outputs have "
                                  f"{num_outputs}: a name stands for the output of its index (line order), "
                                  f"so the list must follow the tagging teacher's class order")
    return counts


def build_trials(cuts: Sequence[Any], trials_file: str | None, num_target: int, num_nontarget: int,
                 seed: int) -> tuple[list[Trial], dict[str, Any]]:
    """Trials from the file when given (cut-ID trials, or a VoxCeleb1 list), else drawn from the speakers."""
    if trials_file and is_voxceleb_list(trials_file):
        trials, num_unmatched = match_voxceleb_trials(read_voxceleb_trials(trials_file), audio_paths(cuts))
        info: dict[str, Any] = {"source": "voxceleb_list", "trials_file": str(Path(trials_file)),
                                "num_trials_unmatched": num_unmatched}
    elif trials_file:
        trials, num_same_cut = _canonical_trials(read_trials(trials_file), {cut.id for cut in cuts})
        info = {"source": "file", "trials_file": str(Path(trials_file)), "num_trials_same_cut_dropped": num_same_cut}
    else:
        speaker_of = speakers(cuts)
        trials = make_trials(speaker_of, num_target, num_nontarget, seed)
        info = {"source": "generated", "seed": seed, "num_cuts_with_speaker": len(speaker_of),
                "num_speakers": len(set(speaker_of.values()))}
    info.update(num_target=sum(t[2] for t in trials), num_nontarget=sum(not t[2] for t in trials))
    return trials, info


def _canonical_trials(trials: Sequence[Trial], cut_ids: set[str]) -> tuple[list[Trial], int]:
    """Trials with ``_repeatN`` IDs mapped as the cuts were; a trial of a cut against itself is dropped."""
    mapped = [(canonical_cut_id(a, cut_ids), canonical_cut_id(b, cut_ids), is_target) for a, b, is_target in trials]
    kept = [trial for trial in mapped if trial[0] != trial[1]]
    return kept, len(mapped) - len(kept)


def score_tagging(scores_of: Mapping[str, np.ndarray], targets: Targets) -> Scores:
    """mAP of per-cut class scores over the labelled cuts that have scores."""
    rows = [i for i, cut_id in enumerate(targets.label_cut_ids) if cut_id in scores_of]
    summary: dict[str, Any] = {"num_cuts": len(rows), "num_cuts_missing": len(targets.label_cut_ids) - len(rows)}
    if not rows:
        return Scores({**summary, "map": None, "reason": "no labelled cut has outputs"})
    labels = targets.labels[rows]
    scores = np.stack([np.asarray(scores_of[targets.label_cut_ids[i]], dtype=np.float64) for i in rows])
    mean, per_class = mean_average_precision(labels, scores)
    num_scored = int((~np.isnan(per_class)).sum())
    summary.update(map=None if num_scored == 0 else mean, num_classes_scored=num_scored)
    return Scores(summary, per_class_ap=per_class)


def score_speakers(embedding_of: Mapping[str, np.ndarray], targets: Targets) -> Scores:
    """EER of cosine-scored trials whose two cuts both have embeddings."""
    kept = [t for t in targets.trials if t[0] in embedding_of and t[1] in embedding_of]
    num_target = sum(t[2] for t in kept)
    summary: dict[str, Any] = {"num_target_trials": num_target, "num_nontarget_trials": len(kept) - num_target,
                               "num_trials_skipped": len(targets.trials) - len(kept)}
    if num_target == 0 or num_target == len(kept):
        return Scores({**summary, "eer": None, "reason": "needs both target and non-target trials"})
    scores, labels = cosine_scores(embedding_of, kept)
    rate, threshold = eer(scores, labels)
    summary.update(eer=rate, threshold=threshold)
    return Scores(summary, det=det_curve(scores, labels))


def json_ready(value: Any) -> Any:
    """Replace NaN/inf by None and numpy scalars/arrays by Python values (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_ready(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value
