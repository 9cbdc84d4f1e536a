"""``mt2kd eval student``: a fine-tuned student scored on any number of test sets, from its checkpoint alone.

Per test set: WER of each decoding method (on the cuts with a transcript),
mAP (on the cuts with event labels), EER (on speaker trials: a cut-ID or
VoxCeleb1 trial file, or trials drawn from the set's speakers), and with a
store the KD L1 to the frames teacher. A score a set cannot give (no
transcripts, no labels, one speaker) is None with its reason. The report is
JSON; :func:`summary_table` is one aligned row per test set.

The pass over a test set: cuts go through the encoder in padded batches under ``torch.no_grad``; the
ASR heads decode each batch with every requested method (batched, see
``_decode.py``), and the tokenizer that travelled in the checkpoint turns
tokens into text. Tag logits and speaker embeddings are kept per cut; with a
store, the frame L1 to the frames teacher is summed as ``eval kd`` sums it.
A cut whose audio cannot be read is skipped and recorded with its reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mt2kd.errors import ConfigError
from mt2kd.eval._asr import wer
from mt2kd.eval._config import StudentEvalConfig
from mt2kd.eval._decode import decode
from mt2kd.eval._inputs import has_events, load_cuts
from mt2kd.eval._scoring import Scores, Targets, build_labels, build_trials, json_ready, score_speakers, score_tagging
from mt2kd.eval._student import StudentResults, _add_frame_l1, _features
from mt2kd.eval._trials import Trial

if TYPE_CHECKING:
    from mt2kd.store import ReadableStore

TRANSDUCER_METHODS = ("greedy", "beam")  # need the transducer; "ctc" needs the CTC head


@dataclasses.dataclass
class PassResults(StudentResults):
    """:class:`StudentResults` (logits, embeddings, L1 sums, failures) plus each method's transcripts."""

    hypotheses: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)  # method -> cut ID -> text


def usable_methods(heads: Any, methods: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The requested methods these ASR heads can run, and why each other one is left out."""
    if heads is None:
        return [], {m: "the checkpoint has no ASR heads (a stage-1 student, or fine-tuned without --tokenizer)"
                    for m in methods}
    usable, skipped = [], {}
    for method in methods:
        needs_transducer = method in TRANSDUCER_METHODS
        present = heads.joiner is not None if needs_transducer else heads.ctc_head is not None
        if present:
            usable.append(method)
        else:
            skipped[method] = f"the ASR heads have no {'transducer' if needs_transducer else 'CTC head'}"
    return usable, skipped


def run_pass(student: Any, cuts: Sequence[Any], methods: Sequence[str], beam: int, batch_size: int,
             device: str, store: ReadableStore | None = None, frames_teacher: str = "whisper") -> PassResults:
    """Outputs of ``student`` (a :func:`mt2kd.train.load_finetuned` result) for every readable cut.

    Examples
    --------
    >>> res = run_pass(load_finetuned("avg.pt"), cuts, ["greedy"], 4, 8, "cpu")  # doctest: +SKIP
    >>> res.hypotheses["greedy"]["utt-1"]  # doctest: +SKIP
    'hello world'
    """
    model = student.model.to(device).eval()
    results = PassResults(num_classes=student.student_config.num_classes)
    results.hypotheses = {method: {} for method in methods}
    for start in range(0, len(cuts), batch_size):
        fbanks = _features(cuts[start:start + batch_size], results.failures)
        if fbanks:
            out = _run_batch(model, student.tokenizer, fbanks, methods, beam, device, results)
            if store is not None:
                _add_frame_l1(out, list(fbanks), store, frames_teacher, results)
    return results


@torch.no_grad()
def _run_batch(model: Any, tokenizer: Any, fbanks: dict[str, torch.Tensor], methods: Sequence[str], beam: int,
               device: str, results: PassResults) -> Any:
    """Run one batch, keep its outputs in ``results``; returns the student output (for the frame L1)."""
    cut_ids = list(fbanks)
    num_frames = torch.tensor([fbanks[c].shape[0] for c in cut_ids])
    padded = torch.nn.utils.rnn.pad_sequence([fbanks[c] for c in cut_ids], batch_first=True)
    out = model.student(padded.to(device), num_frames.to(device))
    at_logits, sv = out.at_logits.float().cpu().numpy(), out.sv_embedding.float().cpu().numpy()
    for row, cut_id in enumerate(cut_ids):
        results.at_logits[cut_id] = at_logits[row].astype(np.float64)
        results.sv_embeddings[cut_id] = sv[row].astype(np.float64)
    for method in methods:
        decoded = decode(model.asr, out.hidden_states[-1], out.num_frames, method=method, beam=beam)
        for cut_id, text in zip(cut_ids, tokenizer.decode(decoded.tokens)):
            results.hypotheses[method][cut_id] = text
    return out


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
    from mt2kd.store import open_view
    from mt2kd.train import load_finetuned

    check_device(config.device)
    student = load_finetuned(config.checkpoint)
    methods, skipped = _methods(student, config.methods)
    store = open_view(config.stores) if config.stores else None
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


def _check_frames_head(config: StudentEvalConfig, student: Any, store: ReadableStore) -> None:
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
    if student.tokenizer is None:
        return usable_methods(None, wanted)
    return usable_methods(student.model.asr, wanted)


def _model_info(config: StudentEvalConfig, student: Any) -> dict[str, Any]:
    return {"checkpoint": config.checkpoint, "kind": student.kind, "step": student.step,
            "num_parameters": sum(p.numel() for p in student.model.parameters()),
            "num_speakers_trained": len(student.speakers),
            "vocab_size": None if student.tokenizer is None else student.tokenizer.vocab_size}


def _score_set(config: StudentEvalConfig, student: Any, methods: list[str], path: str,
               store: ReadableStore | None) -> tuple[dict[str, Any], Scores, Scores]:
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
