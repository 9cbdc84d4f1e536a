"""``mt2kd demo`` (the embedded demo) and ``mt2kd run --config FILE`` (the whole chain)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from mt2kd.cli import one_line_errors


def _echo(text: str) -> None:
    click.echo(text, err=True)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record, not when the handler was made."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ assigns one: ignore it
        pass


def _show_stage_logs() -> None:
    """Let the stages' own log lines (training progress, checkpoints) reach stderr, plainly."""
    logger = logging.getLogger("mt2kd")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _run(config: Any) -> dict[str, Any]:
    from mt2kd.workflows._run import run_workflow

    _show_stage_logs()
    return run_workflow(config, echo=_echo)


def _print_summary(results: dict[str, Any], config: Any, title: str) -> None:
    from mt2kd.workflows._stages import summary_lines

    click.echo("")
    click.echo(title)
    for line in summary_lines(results, config.eval, config.report):
        click.echo(f"  {line}")


@click.command()
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="folder for teachers, data, store, student checkpoints and report.json")
@click.option("--workers", default=2, show_default=True, help="LocalCluster worker processes")
@one_line_errors
def demo(out: str, workers: int) -> None:
    """The whole chain on the bundled demo corpus with tiny RANDOM teachers, in well under a minute on a CPU.

    prepare -> extract -> verify -> stage-1 KD (30 steps, tiny student) -> stage-2 fine-tuning (30 steps:
    BPE, transducer + CTC, tagging, speakers) -> eval (KD L1, mAP, EER; the fine-tuned student's WER, mAP, EER).

    Example: mt2kd demo --out demo-out
    """
    from mt2kd.store import TeacherStore, info_text
    from mt2kd.workflows._demo import NUMBERS_MEAN_NOTHING, RANDOM_BANNER, demo_config, write_demo_manifests
    from mt2kd.workflows._run import with_workers

    config = with_workers(demo_config(out), workers)
    click.echo(RANDOM_BANNER)
    write_demo_manifests(Path(out) / "data")
    results = _run(config)
    click.echo("")
    click.echo("\n".join(info_text(TeacherStore.open(config.extract.store), config.extract.store)))
    _print_summary(results, config, "demo report (RANDOM teachers):")
    click.echo("")
    click.echo(NUMBERS_MEAN_NOTHING)


@click.command()
@click.option("--config", "config_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="workflow config (.yaml/.json): extract, tiny_teachers, verify, train, eval, report, finetune, "
                   "bpe_vocab_size, eval_student, student_report")
@one_line_errors
def run(config_file: str) -> None:
    """Run the chain of one config: prepare -> extract -> verify -> train -> finetune -> eval (the sections it has).

    Example: mt2kd run --config run.yaml
    """
    from mt2kd.workflows._config import WorkflowConfig

    config = WorkflowConfig.load(config_file)
    _print_summary(_run(config), config, "report:")
