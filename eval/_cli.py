"""``mt2kd eval``: score transcripts, teachers (from the store alone) and students.

torch and the student code are imported inside ``eval kd`` only, so the other
commands start quickly.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import click

from mt2kd.cli import config_options, one_line_errors
from mt2kd.eval._config import EvalConfig


@click.group("eval")
def eval_() -> None:
    """Evaluate students and teachers: WER, mAP, EER and KD L1."""


@eval_.command("wer")
@click.option("--ref", "ref_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Reference transcripts, one 'cut_id text' line per cut.")
@click.option("--hyp", "hyp_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Hypotheses in the same format; a missing cut counts as an empty hypothesis.")
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the report as JSON here.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the table.")
@one_line_errors
def wer_command(ref_path: str, hyp_path: str, out: str | None, as_json: bool) -> None:
    """Word and character error rates of transcript files (exact text match, no normalisation)."""
    from mt2kd.eval._asr import read_transcripts, score_transcripts

    report = score_transcripts(read_transcripts(ref_path), read_transcripts(hyp_path))
    _emit({"ref": ref_path, "hyp": hyp_path, **report}, out, as_json)


_HELP = {
    "cuts": "CutSet manifest (repeatable).",
    "stores": "Teacher store (repeatable).",
    "checkpoint": "Student checkpoint.",
    "trials": "Trials file 'enroll test target|nontarget'; drawn from speakers when absent.",
    "labels": "Label list (one name per line, or AudioSet class_labels_indices.csv).",
    "max_cuts": "Score only the first N cuts.",
    "num_target_trials": "Same-speaker trials to draw (without --trials).",
    "num_nontarget_trials": "Different-speaker trials to draw (without --trials).",
    "seed": "Seed of the trial drawing.",
    "pseudo_label_threshold": "Teacher probability counted as a label when cuts carry no events.",
    "batch_size": "Cuts per student forward pass.",
    "device": "torch device of the student.",
    "frames_teacher": "Store teacher whose frames the student's KD L1 compares with (eval kd).",
    "tagging_teacher": "Store teacher whose logits give the tagging ceiling.",
    "speaker_teacher": "Store teacher whose embeddings give the speaker ceiling.",
}
_EXTRA: dict[str, dict[str, Any]] = {
    "cuts": {"required": True, "type": click.Path(exists=True)}, "stores": {"required": True},
    "checkpoint": {"required": True, "type": click.Path(exists=True)},
    "trials": {"type": click.Path(exists=True, dir_okay=False)},
    "labels": {"type": click.Path(exists=True, dir_okay=False)},
    "max_cuts": {"type": click.IntRange(min=1)}, "num_target_trials": {"type": click.IntRange(min=0)},
    "num_nontarget_trials": {"type": click.IntRange(min=0)}, "batch_size": {"type": click.IntRange(min=1)},
}
_STUDENT_ONLY = ("checkpoint", "batch_size", "device")  # fields of eval kd that eval teachers has no use for


def _report_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Where the report goes: options of ``eval teachers`` and ``eval kd`` that are not EvalConfig fields."""
    options = [
        click.option("--out", type=click.Path(dir_okay=False), help="Write the report as JSON here."),
        click.option("--plots", type=click.Path(file_okay=False), help="Write DET and per-class AP plots here."),
        click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the table."),
    ]
    return functools.reduce(lambda cmd, option: option(cmd), reversed(options), command)


@eval_.command("teachers")
@config_options(EvalConfig, _HELP, {"stores": ["--store"]}, _EXTRA, skip=_STUDENT_ONLY)
@_report_options
@one_line_errors
def teachers_command(out: str | None, plots: str | None, as_json: bool, **fields: Any) -> None:
    """Teacher ceiling straight from the store: tagging mAP and speaker EER.

    \b
    Example:
      mt2kd eval teachers --cuts dev.jsonl.gz --store dev.zarr --out teachers.json
    """
    _evaluate(fields, out, plots, as_json)


@eval_.command("kd")
@config_options(EvalConfig, _HELP, {"stores": ["--store"]}, _EXTRA)
@_report_options
@one_line_errors
def kd_command(out: str | None, plots: str | None, as_json: bool, **fields: Any) -> None:
    """Student after KD: L1 to the frame teacher, AT-head mAP, SV-head EER, next to the teachers.

    \b
    Example:
      mt2kd eval kd --checkpoint exp/avg.pt --cuts dev.jsonl.gz --store dev.zarr --plots plots/
    """
    _evaluate(fields, out, plots, as_json)


@eval_.command("student")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Fine-tuned checkpoint (or average); a stage-1 one gives mAP and EER only.")
@click.option("--test-set", "test_sets", multiple=True, required=True,
              help="CutSet manifest of a test set, 'PATH' or 'NAME=PATH' (repeatable).")
@click.option("--store", "stores", multiple=True, help="Teacher store: adds the KD L1 (repeatable; none needed).")
@click.option("--method", "methods", multiple=True, type=click.Choice(["greedy", "beam", "ctc"]),
              help="Decoding method (repeatable; default: greedy, beam and ctc, those the heads have).")
@click.option("--beam", default=4, show_default=True, type=click.IntRange(min=1), help="Beam of modified beam search.")
@click.option("--trials", type=click.Path(exists=True, dir_okay=False),
              help="Cut-ID trials or a VoxCeleb1 list ('1 id/video/00001.wav id/video/00002.wav'), matched to "
                   "each set's cuts; drawn from speakers when absent.")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False),
              help="Label list for event names (default: the one the student was fine-tuned with).")
@click.option("--max-cuts", type=click.IntRange(min=1), help="Score only the first N cuts of each set.")
@click.option("--num-target-trials", default=1000, show_default=True, type=click.IntRange(min=0),
              help="Same-speaker trials to draw per set (without --trials).")
@click.option("--num-nontarget-trials", default=1000, show_default=True, type=click.IntRange(min=0),
              help="Different-speaker trials to draw per set (without --trials).")
@click.option("--seed", default=0, show_default=True, help="Seed of the trial drawing.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1),
              help="Cuts per forward pass.")
@click.option("--device", default="cpu", show_default=True, help="torch device of the student.")
@click.option("--frames-teacher", default="whisper", show_default=True,
              help="Store teacher whose frames the KD L1 compares with (with --store).")
@click.option("--out", type=click.Path(dir_okay=False), help="Write the report as JSON here.")
@click.option("--plots", type=click.Path(file_okay=False), help="Write DET and per-class AP plots here.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the table.")
@one_line_errors
def student_command(out: str | None, plots: str | None, as_json: bool, **fields: Any) -> None:
    """A fine-tuned student on any number of test sets: WER per decoding method, mAP, EER (no store needed).

    \b
    Example:
      mt2kd eval student --checkpoint exp-ft/avg.pt --test-set clean=test-clean.jsonl.gz \\
        --test-set other=test-other.jsonl.gz --test-set vox=vox1-O.jsonl.gz --trials veri_test2.txt
    """
    from mt2kd.eval._config import METHODS, StudentEvalConfig
    from mt2kd.eval._report import write_json, write_plots
    from mt2kd.eval._student_eval import evaluate_student, summary_table

    fields = {**fields, "test_sets": tuple(fields["test_sets"]), "stores": tuple(fields["stores"]),
              "methods": tuple(fields["methods"]) or METHODS}
    evaluation = evaluate_student(StudentEvalConfig(**fields))
    if out:
        write_json(evaluation.report, out)
    click.echo(json.dumps(evaluation.report, indent=2, allow_nan=False) if as_json
               else summary_table(evaluation.report))
    if plots:
        for path in write_plots(evaluation.tagging, evaluation.speaker, plots):
            click.echo(f"wrote {path}", err=True)


def _evaluate(fields: dict[str, Any], out: str | None, plots: str | None, as_json: bool) -> None:
    from mt2kd.eval._report import write_plots
    from mt2kd.eval._run import evaluate

    fields = {**fields, "cuts": tuple(fields["cuts"]), "stores": tuple(fields["stores"])}
    evaluation = evaluate(EvalConfig(**fields))
    _emit(evaluation.report, out, as_json)
    if plots:
        for path in write_plots(evaluation.tagging, evaluation.speaker, plots):
            click.echo(f"wrote {path}", err=True)


def _emit(report: dict[str, Any], out: str | None, as_json: bool) -> None:
    from mt2kd.eval._report import format_table, write_json

    if out:
        write_json(report, out)
    click.echo(json.dumps(report, indent=2, allow_nan=False) if as_json else format_table(report))
