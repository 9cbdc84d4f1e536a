"""Frozen teachers and the distributed extraction job."""

from __future__ import annotations

import importlib
from typing import Any

from mt2kd.extract._teacher import SAMPLE_RATE, Teacher, load_teacher, register_teacher, teacher_names

__all__ = [
    "SAMPLE_RATE",
    "Teacher",
    "checkpoint_is_random",
    "load_teacher",
    "make_tiny_checkpoints",
    "register_teacher",
    "teacher_names",
]

# Names whose modules import torch: resolved on first use so that importing
# mt2kd.extract (the job's client, `--dry-run`) stays light.
_LAZY = {
    "checkpoint_is_random": "mt2kd.extract._tiny",
    "make_tiny_checkpoints": "mt2kd.extract._tiny",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mt2kd.extract' has no attribute {name!r}")
