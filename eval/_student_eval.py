"""``mt2kd eval student``: a fine-tuned student scored on any number of test sets, from its checkpoint alone.

Per test set: WER of each decoding method (on the cuts with a transcript),
mAP (on the cuts with event labels), EER (on speaker trials: a cut-ID or
VoxCeleb1 trial file, or trials drawn from the set's speakers), and with a
store the KD L1 to the frames teacher. A score a set cannot give (no
transcripts, no labels, one speaker) is None with its reason. The report is
JSON; :func:`summary_table` is one aligned row per test set.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from mt2kd.errors import ConfigError
from mt2kd.eval._asr import wer
from mt2kd.eval._inputs import has_events, load_cuts, open_store_view
from mt2kd.eval._scoring import Scores, Targets, build_labels, build_trials, json_ready, score_speakers, score_tagging
from mt2kd.eval._trials import Trial

METHODS = ("greedy", "beam", "ctc")


@dataclasses.dataclass(frozen=True)
class StudentEvalConfig:
    """What ``mt2kd eval student`` scores; each field is its flag (``--test-set`` for test_sets).

    Examples
    --------
    >>> StudentEvalConfig("avg.pt", ("clean=test-clean.jsonl.gz",)).set_names()
    ['clean']
    """

    checkpoint: str  # a fine-tuned checkpoint (or a stage-1 one: mAP and EER only)
    test_sets: tuple[str, ...]  # CutSet manifests, each "PATH" or "NAME=PATH" (name: the file name by default)
    stores: tuple[str, ...] = ()  # teacher stores: adds the KD L1 to the frames teacher (none needed)
    methods: tuple[str, ...] = METHODS  # decoding methods: transducer greedy and beam, CTC greedy
    beam: int = 4  # hypotheses kept by modified beam search
    trials: str | None = None  # cut-ID trials or a VoxCeleb1 list, applied to every set whose cuts it names
    labels: str | None = None  # label list for event names (default: the one the student was trained with)
    max_cuts: int | None = None  # score only the first N cuts of each set
    num_target_trials: int = 1000  # same-speaker trials drawn per set without --trials
    num_nontarget_trials: int = 1000  # different-speaker trials drawn per set without --trials
    seed: int = 0  # seed of the trial drawing
    batch_size: int = 8  # cuts per forward pass
    device: str = "cpu"  # torch device of the student
    frames_teacher: str = "whisper"  # store teacher of the KD L1

    def __post_init__(self) -> None:
        if not self.test_sets:
            raise ConfigError("test_sets must name at least one manifest (--test-set). Got none.")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"methods must be among {list(METHODS)}. Got {unknown}.")
        for name in ("beam", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1. Got {getattr(self, name)}.")
        names = self.set_names()
        if len(set(names)) != len(names):
            raise ConfigError(f"test sets must have distinct names (use NAME=PATH). Got {names}.")

    def sets(self) -> list[tuple[str, str]]:
        """(name, manifest path) of each test set."""
        found = []
        for spec in self.test_sets:
            name, sep, path = spec.partition("=")
            if not sep:
                path, name = spec, Path(spec).name.split(".")[0]
            found.append((name, path))
        return found

    def set_names(self) -> list[str]:
        return [name for name, _ in self.sets()]

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudentEvalConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown StudentEvalConfig fields {unknown}; expected a subset of {sorted(known)}.")
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)


@dataclasses.dataclass
class StudentEvaluation:
    report: dict[str, Any]  # JSON-ready
    tagging: dict[str, Scores]  # test set name -> mAP scores (for plots)
    speaker: dict[str, Scores]  # test set name -> EER scores (for plots)


def evaluate_student(config: StudentEvalConfig) -> StudentEvaluation:
    """Score the student of ``config.checkpoint`` on every test set.

    Examples
    --------
    >>> ev = evaluate_student(StudentEvalConfig("avg.pt", ("test-clean.jsonl.gz",)))  # doctest: +SKIP
    >>> ev.report["test_sets"]["test-clean"]["wer"]["beam"]["rate"]  # doctest: +SKIP
    0.0235
    """
    from mt2kd.eval._student import check_device
    from mt2kd.train import load_finetuned

    check_device(config.device)
    student = load_finetuned(config.checkpoint)
    methods, skipped = _methods(student, config.methods)
    store = open_store_view(config.stores) if config.stores else None
    if store is not None:
        _check_frames_head(config, student, store)
    report: dict[str, Any] = {"config": config.to_dict(), "model": _model_info(config, student),
                              "methods_skipped": skipped, "test_sets": {}}
    tagging, speaker = {}, {}
    for name, path in config.sets():
        entry, tagging[name], speaker[name] = _score_set(config, student, methods, path, store)
        report["test_sets"][name] = entry
    report["per_class_ap"] = {n: s.per_class_ap for n, s in tagging.items() if s.per_class_ap is not None}
    return StudentEvaluation(json_ready(report), tagging, speaker)


def _check_frames_head(config: StudentEvalConfig, student: Any, store: Any) -> None:
    """Refuse a store whose frames teacher the student's frames head (M_ASR) cannot be compared with."""
    spec = store.specs.get(config.frames_teacher)
    heads = [h for h in student.student_config.resolved_heads() if h.kind == "frames"]
    if spec is None or not heads:
        return
    if heads[0].dim != spec.dim:
        raise ConfigError(f"the student's frames head must be as wide as the {config.frames_teacher!r} teacher "
                          f"({spec.dim}) in the stores {list(config.stores)} for the KD L1. Got {heads[0].dim} in "
                          f"{config.checkpoint}: name another teacher with --frames-teacher, or leave out --store.")


def _methods(student: Any, wanted: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    from mt2kd.eval._student_pass import usable_methods

    if student.tokenizer is None:
        return usable_methods(None, wanted)
    return usable_methods(student.model.asr, wanted)


def _model_info(config: StudentEvalConfig, student: Any) -> dict[str, Any]:
    return {"checkpoint": config.checkpoint, "kind": student.kind, "step": student.step,
            "num_parameters": sum(p.numel() for p in student.model.parameters()),
            "num_speakers_trained": len(student.speakers),
            "vocab_size": None if student.tokenizer is None else student.tokenizer.vocab_size}


def _score_set(config: StudentEvalConfig, student: Any, methods: list[str], path: str,
               store: Any) -> tuple[dict[str, Any], Scores, Scores]:
    from mt2kd.eval._student_pass import run_pass

    cuts = load_cuts([path], config.max_cuts)
    if not cuts:
        raise ConfigError(f"test set {path!r} must hold at least one cut. Got none.")
    results = run_pass(student, cuts, methods, config.beam, config.batch_size, config.device, store,
                       config.frames_teacher)
    targets = _targets(config, student, cuts)
    tagging = score_tagging(results.at_logits, targets)
    speaker = score_speakers(results.sv_embeddings, targets)
    entry = {"manifest": path, "num_cuts": len(cuts), "num_cuts_failed": len(results.failures),
             "failures": dict(results.failures), "wer": _wer(cuts, results.hypotheses, methods),
             "map": tagging.summary, "eer": speaker.summary, "trials": targets.trial_info,
             "labels": targets.label_info}
    if store is not None:
        entry["kd_l1"] = results.kd_l1_summary(config.frames_teacher)
    return entry, tagging, speaker


def _targets(config: StudentEvalConfig, student: Any, cuts: list[Any]) -> Targets:
    label_file = config.labels or student.label_file or None
    if any(has_events(cut) for cut in cuts):
        label_ids, labels, label_info = build_labels(cuts, student.student_config.num_classes, label_file, {}, 0.5)
    else:  # no event labels: no mAP (a student is not scored against its own teacher's pseudo-labels here)
        import numpy as np

        label_ids, labels = [], np.zeros((0, student.student_config.num_classes), dtype=bool)
        label_info = {"source": None, "num_cuts_labelled": 0, "reason": "no cut of the set has event labels"}
    trials, trial_info = build_trials(cuts, config.trials, config.num_target_trials, config.num_nontarget_trials,
                                      config.seed)
    return Targets(label_ids, labels, label_info, _same_set(trials, cuts), trial_info)


def _same_set(trials: list[Trial], cuts: list[Any]) -> list[Trial]:
    ids = {cut.id for cut in cuts}
    return [t for t in trials if t[0] in ids and t[1] in ids]


def _wer(cuts: list[Any], hypotheses: dict[str, dict[str, str]], methods: list[str]) -> dict[str, Any]:
    from mt2kd.train import cut_text

    refs = {cut.id: text for cut in cuts if (text := cut_text(cut)) is not None}
    if not refs:
        return {m: {"rate": None, "reason": "no cut of the set has a transcript"} for m in methods}
    scored = {}
    for method in methods:
        kept = [c for c in refs if c in hypotheses[method]]
        result = wer([refs[c] for c in kept], [hypotheses[method][c] for c in kept])
        scored[method] = {**result.to_dict(), "num_cuts": len(kept)}
    return scored


def summary_table(report: dict[str, Any]) -> str:
    """One aligned row per test set: cuts, WER of each method, mAP, EER (percent; '-' where not scored).

    Examples
    --------
    >>> print(summary_table({"config": {"methods": ["greedy"]}, "test_sets": {"dev": {"num_cuts": 3,
    ...     "wer": {"greedy": {"rate": 0.125}}, "map": {"map": None}, "eer": {"eer": 0.05}}}}))
    test set  cuts  WER greedy  mAP    EER
    dev          3      12.50%    -  5.00%
    """
    methods = [m for m in report["config"]["methods"] if m not in report.get("methods_skipped", {})]
    header = ["test set", "cuts", *[f"WER {m}" for m in methods], "mAP", "EER"]
    rows = [header]
    for name, entry in report["test_sets"].items():
        wers = [_percent((entry["wer"].get(m) or {}).get("rate")) for m in methods]
        rows.append([name, str(entry["num_cuts"]), *wers, _percent(entry["map"].get("map")),
                     _percent(entry["eer"].get("eer"))])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def _percent(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"
