"""The train, finetune and eval stages of a workflow, and the short report that ends a run.

Every stage calls its component's own entry point (:func:`mt2kd.train.train`,
:func:`mt2kd.train.finetune`, :func:`mt2kd.eval.evaluate`, ``evaluate_student``)
with the config section unchanged, so a stage run from a workflow is the run
``mt2kd train kd|finetune`` / ``mt2kd eval kd|student`` would make from the
same fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from mt2kd.eval import EvalConfig, StudentEvalConfig
from mt2kd.train import FinetuneConfig, TrainConfig

Echo = Callable[[str], None]
NOT_LOSSES = ("lr", "encoder_lr", "grad_norm")  # step values that are not losses
NUM_MEAN_STEPS = 5  # steps averaged for the "from" and "to" losses of the summary (one step is noisy)


@dataclasses.dataclass(frozen=True)
class TrainSummary:
    """What a train stage did: steps run in this call, loss at its start and end, the last checkpoint."""

    stage: str  # "train" or "finetune": how the summary line starts
    exp_dir: str  # where checkpoints and the resolved config are
    num_steps: int  # the step the run stands at now
    num_steps_run: int  # steps trained by this call (0 when it resumed at the end)
    first: dict[str, float]  # mean losses of the first steps of this call
    last: dict[str, float]  # mean losses of the last steps of this call
    checkpoint: str  # the latest checkpoint

    def line(self) -> str:
        if not self.num_steps_run:
            return (f"{self.stage}: already at step {self.num_steps} in {self.exp_dir} (resumed; nothing left to "
                    "train)")
        losses = ", ".join(f"{k} {self.first[k]:.3f} -> {self.last[k]:.3f}" for k in self.first)
        return f"{self.stage}: {self.num_steps_run} steps ({losses}); checkpoint {self.checkpoint}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _mean_losses(history: list[dict[str, float]]) -> dict[str, float]:
    keys = [k for k in (history[0] if history else {}) if k not in NOT_LOSSES]
    return {k: sum(h[k] for h in history) / len(history) for k in keys}


def _summarise(stage: str, exp_dir: str, num_steps: int, history: list[dict[str, float]]) -> TrainSummary:
    from mt2kd.train import list_checkpoints

    found = list_checkpoints(exp_dir)
    return TrainSummary(stage=stage, exp_dir=exp_dir, num_steps=num_steps, num_steps_run=len(history),
                        first=_mean_losses(history[:NUM_MEAN_STEPS]), last=_mean_losses(history[-NUM_MEAN_STEPS:]),
                        checkpoint=str(found[-1]) if found else "")


def train_stage(cfg: TrainConfig, say: Echo) -> TrainSummary:
    """Stage-1 KD (resuming from ``cfg.exp_dir`` when it holds checkpoints)."""
    from mt2kd.train import train

    say(f"train: stage-1 KD, student {cfg.student!r}, {cfg.num_steps} steps of <= {cfg.max_duration:g} s "
        f"batches -> {cfg.exp_dir}")
    summary = _summarise("train", cfg.exp_dir, cfg.num_steps, train(cfg))
    say(summary.line())
    return summary


def finetune_stage(cfg: FinetuneConfig, bpe_vocab_size: int, say: Echo) -> TrainSummary:
    """Stage-2 fine-tuning, after training the BPE model it names when that is not there yet."""
    from pathlib import Path

    from mt2kd.train import finetune, train_bpe

    if cfg.tokenizer and not Path(cfg.tokenizer).exists():
        tokenizer = train_bpe(list(cfg.cuts), bpe_vocab_size, cfg.tokenizer)
        say(f"finetune: BPE model of {tokenizer.vocab_size} pieces from the transcripts -> {cfg.tokenizer}")
    start = f"from {cfg.init}" if cfg.init else f"from scratch (student {cfg.student!r})"
    say(f"finetune: stage 2 {start}, {cfg.num_steps} steps (encoder frozen for {cfg.freeze_encoder_steps}, then "
        f"at lr x {cfg.encoder_lr_scale:g}; SV branch {'frozen' if cfg.freeze_sv else 'trained'}) -> {cfg.exp_dir}")
    summary = _summarise("finetune", cfg.exp_dir, cfg.num_steps, finetune(cfg))
    say(summary.line())
    return summary


def eval_student_stage(cfg: StudentEvalConfig, report_path: str, say: Echo) -> dict[str, Any]:
    """Score the fine-tuned student on its test sets; returns the report."""
    from mt2kd.eval import evaluate_student, summary_table, write_json

    say(f"eval student: {cfg.checkpoint} on {len(cfg.test_sets)} test set(s)")
    report = evaluate_student(cfg).report
    for line in summary_table(report).splitlines():
        say(f"  {line}")
    if report_path:
        write_json(report, report_path)
        say(f"eval student: report -> {report_path}")
    return report


def eval_stage(cfg: EvalConfig, report_path: str, say: Echo) -> dict[str, Any]:
    """Evaluate teachers (and the student when ``cfg.checkpoint`` is set); returns the report."""
    from mt2kd.eval import evaluate, write_json

    who = f"student {cfg.checkpoint} and teachers" if cfg.checkpoint else "teachers (no student checkpoint)"
    say(f"eval: {who} on {len(cfg.cuts)} manifest(s)")
    report = evaluate(cfg).report
    if report_path:
        write_json(report, report_path)
        say(f"eval: report -> {report_path}")
    return report


def _number(summary: dict[str, Any] | None, key: str) -> str:
    if summary is None:
        return "-"
    value = summary.get(key)
    return f"{value:.3f}" if isinstance(value, float) else f"- ({summary.get('reason', 'not computed')})"


def summary_lines(results: dict[str, Any], cfg: EvalConfig | None, report_path: str = "") -> list[str]:
    """A few aligned lines with the numbers a reader looks for first (the JSON report has the rest).

    Examples
    --------
    >>> print("\\n".join(summary_lines({"verify": []}, None)))
    verify : OK
    """
    lines = [f"verify : {'OK' if not results.get('verify') else 'problems'}"] if "verify" in results else []
    if "train" in results:
        lines.append(f"train  : {results['train'].line().removeprefix('train: ')}")
    if "finetune" in results:
        lines.append(f"stage 2: {results['finetune'].line().removeprefix('finetune: ')}")
    report = results.get("eval")
    if report is not None and cfg is not None:
        lines += _eval_lines(report, cfg, tuned="eval_student" in results)
    if "eval_student" in results:
        lines += student_lines(results["eval_student"])
    if report_path:
        lines.append(f"report : {report_path}")
    return lines


def student_lines(report: dict[str, Any]) -> list[str]:
    """The fine-tuned student's own WER per method, mAP and EER, one line per test set and score."""
    lines = []
    for name, entry in report["test_sets"].items():
        wers = [f"{method} {_percent(score.get('rate'))}" for method, score in entry["wer"].items()
                if score.get("rate") is not None]
        if wers:
            lines.append(f"WER    : fine-tuned student on {name}: {', '.join(wers)} "
                         f"({entry['wer'][next(iter(entry['wer']))].get('num_cuts', 0)} transcribed cuts)")
        if entry["map"].get("map") is not None:
            lines.append(f"mAP    : fine-tuned student on {name}: {entry['map']['map']:.3f} "
                         f"({entry['map']['num_cuts']} labelled cuts)")
        if entry["eer"].get("eer") is not None:
            lines.append(f"EER    : fine-tuned student on {name}: {entry['eer']['eer']:.3f} "
                         f"({entry['eer']['num_target_trials']} target / {entry['eer']['num_nontarget_trials']} "
                         f"non-target trials)")
    return lines


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _eval_lines(report: dict[str, Any], cfg: EvalConfig, tuned: bool = False) -> list[str]:
    student = report.get("student")
    teachers = report["teachers"]
    tagging = teachers[cfg.tagging_teacher]["map"]
    speaker = teachers[cfg.speaker_teacher]["eer"]
    lines = []
    if student is not None:
        kd = student["kd_l1"]
        lines.append(f"KD L1  : student {_number(kd, 'l1')} to {kd['teacher']} frames over {kd['num_cuts']} cuts")
    lines.append(f"mAP    : student {_number(student and student['map'], 'map')} | teacher {cfg.tagging_teacher} "
                 f"{_number(tagging, 'map')}  ({tagging['num_cuts']} labelled cuts, "
                 f"{tagging.get('num_classes_scored', 0)} classes with positives)")
    note = report.get("labels", {}).get("note")
    if note:  # pseudo-labels from the tagging teacher itself: its mAP of 1.0 says nothing
        lines.append(f"         labels: {note}")
    lines.append(f"EER    : student {_number(student and student['eer'], 'eer')} | teacher {cfg.speaker_teacher} "
                 f"{_number(speaker, 'eer')}  ({speaker['num_target_trials']} target / "
                 f"{speaker['num_nontarget_trials']} non-target trials)")
    if not tuned:
        lines.append("WER    : not measured (a stage-1 student has no ASR decoder: fine-tune it with a "
                     "'finetune' section, or score transcripts from any recogniser with `mt2kd eval wer`)")
    return lines
