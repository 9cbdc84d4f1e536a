"""Run the chain of a :class:`WorkflowConfig`: prepare, extract, verify, then the stages hooked in."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mt2kd.errors import ConfigError, ValidationError
from mt2kd.workflows._config import WorkflowConfig

Echo = Callable[[str], None]
# Later stages plug in here (name -> function of the config and the results so far); `train` and
# `eval` sections of a config run only when a hook of that name is registered.
STAGE_HOOKS: dict[str, Callable[[WorkflowConfig, dict[str, Any]], Any]] = {}
LATER_STAGES = ("train", "eval")


def register_stage(name: str, hook: Callable[[WorkflowConfig, dict[str, Any]], Any]) -> None:
    """Make the ``name`` section of workflow configs runnable (``train`` or ``eval``)."""
    if name not in LATER_STAGES:
        raise ConfigError(f"stage must be one of {list(LATER_STAGES)}. Got {name!r}.")
    STAGE_HOOKS[name] = hook


def prepare(config: WorkflowConfig, echo: Echo) -> None:
    """Write tiny random teachers when the config asks for them (kept if already there)."""
    if not config.tiny_teachers:
        return
    from mt2kd.extract._tiny import TINY_NOTE_FILE, make_tiny_checkpoints

    folder = Path(config.tiny_teachers)
    if (folder / TINY_NOTE_FILE).is_file():
        echo(f"prepare: tiny RANDOM teachers already in {folder}")
        return
    make_tiny_checkpoints(folder)
    echo(f"prepare: wrote tiny RANDOM-weight teachers to {folder}")


def manifest_durations(manifests: tuple[str, ...]) -> dict[str, float]:
    from mt2kd.store._cli import load_durations

    durations: dict[str, float] = {}
    for manifest in manifests:
        durations.update(load_durations(manifest))
    return durations


def verify(config: WorkflowConfig, echo: Echo) -> list[str]:
    """Every cut of the manifests present (or recorded as failed), frame counts right, values finite."""
    from mt2kd.store import TeacherStore

    store = TeacherStore.open(config.extract.store)
    failed = {f["cut_id"] for f in store.failures() if f["teacher"] is None}
    durations = {k: v for k, v in manifest_durations(config.extract.cuts).items() if k not in failed}
    problems = [str(p) for p in store.verify(durations)]  # readable lines; Problem fields: mt2kd.store.Problem
    echo(f"verify: {len(store):,} cuts, {len(failed)} recorded failures, "
         + ("OK" if not problems else f"{len(problems)} problems"))
    for problem in problems[:20]:
        echo(f"  - {problem}")
    return problems


def run_workflow(config: WorkflowConfig, echo: Echo | None = None, progress: bool = True) -> dict[str, Any]:
    """Run prepare -> extract -> verify -> (hooked) train -> eval; returns each stage's result.

    Examples
    --------
    >>> results = run_workflow(WorkflowConfig.load("run.yaml"))  # doctest: +SKIP
    >>> results["verify"]
    []
    """
    from mt2kd.extract._job import extract

    say = echo or (lambda text: print(text, file=sys.stderr))
    for stage in LATER_STAGES:
        if getattr(config, stage) is not None and stage not in STAGE_HOOKS:
            raise ConfigError(f"the {stage!r} section needs the {stage} stage hooked into workflows "
                              f"(register_stage). Got none; run `mt2kd {stage}` on the store instead.")
    prepare(config, say)
    results: dict[str, Any] = {"extract": extract(config.extract, echo=say, progress=progress)}
    say(results["extract"].line())
    if config.verify:
        results["verify"] = verify(config, say)
        if results["verify"]:
            raise ValidationError(f"the store {config.extract.store} must verify clean. "
                                  f"Got {len(results['verify'])} problems.")
    for stage in LATER_STAGES:
        if getattr(config, stage) is not None:
            results[stage] = STAGE_HOOKS[stage](config, results)
    return results


def with_workers(config: WorkflowConfig, workers: int) -> WorkflowConfig:
    return dataclasses.replace(config, extract=dataclasses.replace(config.extract, workers=workers))
