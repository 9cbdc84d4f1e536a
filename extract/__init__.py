"""Frozen teachers and the distributed extraction job."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mt2kd.extract._teacher import SAMPLE_RATE, Teacher, load_teacher, register_teacher, teacher_names

if TYPE_CHECKING:
    from mt2kd.extract._config import ExtractConfig, TeacherConfig
    from mt2kd.extract._job import extract
    from mt2kd.extract._progress import ExtractSummary
    from mt2kd.extract._tiny import checkpoint_is_random, make_tiny_checkpoints

__all__ = [
    "SAMPLE_RATE",
    "ExtractConfig",
    "ExtractSummary",
    "Teacher",
    "TeacherConfig",
    "checkpoint_is_random",
    "extract",
    "load_teacher",
    "make_tiny_checkpoints",
    "register_teacher",
    "teacher_names",
]

# Resolved on first use so that importing mt2kd.extract stays light (the
# teachers' modules import torch; the job's modules import dask and lhotse).
_LAZY = {
    "ExtractConfig": "mt2kd.extract._config",
    "ExtractSummary": "mt2kd.extract._progress",
    "TeacherConfig": "mt2kd.extract._config",
    "extract": "mt2kd.extract._job",
    "checkpoint_is_random": "mt2kd.extract._tiny",
    "make_tiny_checkpoints": "mt2kd.extract._tiny",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mt2kd.extract' has no attribute {name!r}")
