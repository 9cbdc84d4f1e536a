"""Run the chain of a :class:`WorkflowConfig`: prepare, extract, verify, train, eval."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mt2kd.cuts import load_durations
from mt2kd.errors import ValidationError
from mt2kd.workflows._config import WorkflowConfig
from mt2kd.workflows._stages import eval_stage, eval_student_stage, finetune_stage, train_stage

Echo = Callable[[str], None]


def prepare(config: WorkflowConfig, echo: Echo) -> None:
    """Write tiny random teachers when the config asks for them (kept if already there)."""
    if not config.tiny_teachers:
        return
    from mt2kd.extract import TINY_NOTE_FILE, make_tiny_checkpoints

    folder = Path(config.tiny_teachers)
    if (folder / TINY_NOTE_FILE).is_file():
        echo(f"prepare: tiny RANDOM teachers already in {folder}")
        return
    make_tiny_checkpoints(folder)
    echo(f"prepare: wrote tiny RANDOM-weight teachers to {folder}")


def manifest_durations(manifests: tuple[str, ...]) -> dict[str, float]:
    durations: dict[str, float] = {}
    for manifest in manifests:
        durations.update(load_durations(manifest))
    return durations


def verify(config: WorkflowConfig, echo: Echo) -> list[str]:
    """Every cut of the manifests present (or recorded as failed), frame counts right, values finite."""
    from mt2kd.store import TeacherStore

    store = TeacherStore.open(config.extract.store)
    failed = {f["cut_id"] for f in store.failures() if f["teacher"] is None}
    # readable lines (Problem fields: mt2kd.store.Problem); verify counts cuts recorded as failed as accounted
    # for; complete: an interrupted extraction is a problem
    problems = [str(p) for p in store.verify(manifest_durations(config.extract.cuts), complete=True)]
    echo(f"verify: {len(store):,} cuts, {len(failed)} recorded failures, "
         + ("OK" if not problems else f"{len(problems)} problems"))
    for problem in problems[:20]:
        echo(f"  - {problem}")
    return problems


def run_workflow(config: WorkflowConfig, echo: Echo | None = None, progress: bool = True) -> dict[str, Any]:
    """Run prepare -> extract -> verify -> train -> finetune -> eval (the sections it has); returns each result.

    ``results["train"]`` and ``results["finetune"]`` are :class:`TrainSummary`
    objects, ``results["eval"]`` the evaluation report (also written to
    ``config.report`` when set), ``results["eval_student"]`` the fine-tuned
    student's report (``config.student_report``).

    Examples
    --------
    >>> results = run_workflow(WorkflowConfig.load("run.yaml"))  # doctest: +SKIP
    >>> results["verify"], results["eval"]["student"]["kd_l1"]["l1"]  # doctest: +SKIP
    ([], 0.31)
    """
    from mt2kd.extract import extract

    say = echo or (lambda text: print(text, file=sys.stderr))
    prepare(config, say)
    results: dict[str, Any] = {"extract": extract(config.extract, echo=say, progress=progress)}
    say(results["extract"].line())
    if config.verify:
        results["verify"] = verify(config, say)
        if results["verify"]:
            raise ValidationError(f"the store {config.extract.store} must verify clean. "
                                  f"Got {len(results['verify'])} problems.")
    if config.train is not None:
        results["train"] = train_stage(config.train, say)
    if config.finetune is not None:
        results["finetune"] = finetune_stage(config.finetune, config.bpe_vocab_size, say)
    if config.eval is not None:
        results["eval"] = eval_stage(config.eval, config.report, say)
    if config.eval_student is not None:
        results["eval_student"] = eval_student_stage(config.eval_student, config.student_report, say)
    return results


def with_workers(config: WorkflowConfig, workers: int) -> WorkflowConfig:
    return dataclasses.replace(config, extract=dataclasses.replace(config.extract, workers=workers))
