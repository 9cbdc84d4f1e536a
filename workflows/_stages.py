"""The train and eval stages of a workflow, and the short report that ends a run.

Both stages call the components' own entry points (:func:`mt2kd.train.train`,
:func:`mt2kd.eval.evaluate`) with the config sections unchanged, so a stage
run from a workflow is the run ``mt2kd train kd`` / ``mt2kd eval kd`` would
make from the same fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from mt2kd.eval._config import EvalConfig
from mt2kd.train._config import TrainConfig

Echo = Callable[[str], None]
LOSS_KEYS = ("whisper", "beats", "ecapa", "total")
NUM_MEAN_STEPS = 5  # steps averaged for the "from" and "to" losses of the summary (one step is noisy)


@dataclasses.dataclass(frozen=True)
class TrainSummary:
    """What a train stage did: steps run in this call, loss at its start and end, the last checkpoint."""

    exp_dir: str  # where checkpoints and the resolved config are
    num_steps: int  # the step the run stands at now
    num_steps_run: int  # steps trained by this call (0 when it resumed at the end)
    first: dict[str, float]  # mean losses of the first steps of this call
    last: dict[str, float]  # mean losses of the last steps of this call
    checkpoint: str  # the latest checkpoint

    def line(self) -> str:
        if not self.num_steps_run:
            return f"train: already at step {self.num_steps} in {self.exp_dir} (resumed; nothing left to train)"
        losses = ", ".join(f"{k} {self.first[k]:.3f} -> {self.last[k]:.3f}" for k in LOSS_KEYS if k in self.first)
        return f"train: {self.num_steps_run} steps ({losses}); checkpoint {self.checkpoint}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _mean_losses(history: list[dict[str, float]]) -> dict[str, float]:
    return {k: sum(h[k] for h in history) / len(history) for k in LOSS_KEYS if history and k in history[0]}


def train_stage(cfg: TrainConfig, say: Echo) -> TrainSummary:
    """Stage-1 KD (resuming from ``cfg.exp_dir`` when it holds checkpoints)."""
    from mt2kd.train import train
    from mt2kd.train._checkpoint import list_checkpoints

    say(f"train: stage-1 KD, student {cfg.student!r}, {cfg.num_steps} steps of <= {cfg.max_duration:g} s "
        f"batches -> {cfg.exp_dir}")
    history = train(cfg)
    found = list_checkpoints(cfg.exp_dir)
    summary = TrainSummary(
        exp_dir=cfg.exp_dir, num_steps=cfg.num_steps, num_steps_run=len(history),
        first=_mean_losses(history[:NUM_MEAN_STEPS]), last=_mean_losses(history[-NUM_MEAN_STEPS:]),
        checkpoint=str(found[-1]) if found else "")
    say(summary.line())
    return summary


def eval_stage(cfg: EvalConfig, report_path: str, say: Echo) -> dict[str, Any]:
    """Evaluate teachers (and the student when ``cfg.checkpoint`` is set); returns the report."""
    from mt2kd.eval._report import write_json
    from mt2kd.eval._run import evaluate

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
    report = results.get("eval")
    if report is not None and cfg is not None:
        lines += _eval_lines(report, cfg)
    if report_path:
        lines.append(f"report : {report_path}")
    return lines


def _eval_lines(report: dict[str, Any], cfg: EvalConfig) -> list[str]:
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
    lines.append("WER    : not measured (a stage-1 student has no ASR decoder; score transcripts from any "
                 "recogniser with `mt2kd eval wer`)")
    return lines
