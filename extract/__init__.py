"""Frozen teachers and the distributed extraction job."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mt2kd._exports import lazy_exports
from mt2kd.cuts import SAMPLE_RATE
from mt2kd.extract._teacher import Teacher, load_teacher, register_teacher, teacher_names

if TYPE_CHECKING:
    from mt2kd.extract._config import ExtractConfig, TeacherConfig
    from mt2kd.extract._job import extract
    from mt2kd.extract._progress import ExtractSummary
    from mt2kd.extract._tiny import TINY_NOTE_FILE, checkpoint_is_random, make_tiny_checkpoints

__all__ = [
    "SAMPLE_RATE",
    "TINY_NOTE_FILE",
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
_WHERE = {
    "ExtractConfig": "_config",
    "ExtractSummary": "_progress",
    "TINY_NOTE_FILE": "_tiny",
    "TeacherConfig": "_config",
    "extract": "_job",
    "checkpoint_is_random": "_tiny",
    "make_tiny_checkpoints": "_tiny",
}
if not TYPE_CHECKING:
    __getattr__ = lazy_exports(__name__, _WHERE)
