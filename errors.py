"""The one error hierarchy of mt2kd.

Every error subclasses :class:`MT2KDError` and the closest built-in, so callers
can catch either (``except FileNotFoundError`` keeps working).
"""

from __future__ import annotations

__all__ = [
    "MT2KDError",
    "ConfigError",
    "StoreError",
    "StoreNotFoundError",
    "StoreFormatError",
    "StoreWriteError",
    "ShardCommittedError",
    "ShardLockedError",
    "DuplicateCutError",
    "CutNotFoundError",
    "ValidationError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "FingerprintMismatchError",
    "TooManyFailuresError",
]


class MT2KDError(Exception):
    """Base class of every mt2kd error."""


class ConfigError(MT2KDError, ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


class StoreError(MT2KDError):
    """Something is wrong with a teacher store."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """No store exists at the given path or URL."""


class StoreFormatError(StoreError, ValueError):
    """The store exists but is not a valid mt2kd store (version, codec, layout)."""


class StoreWriteError(StoreError):
    """The file system refused a write into the store (disk full, a file-size limit, a quota)."""


class ShardCommittedError(StoreError, FileExistsError):
    """The shard is already committed and replacing it was not asked for."""


class ShardLockedError(StoreError, BlockingIOError):
    """Another writer holds the shard (or the store) right now."""


class DuplicateCutError(MT2KDError, ValueError):
    """A cut ID occurs twice where IDs must be unique."""


class CutNotFoundError(StoreError, KeyError):
    """The cut ID is not in the store."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class ValidationError(MT2KDError, ValueError):
    """An array or value does not match what its spec requires."""

    def __init__(self, *args: object, teacher: str | None = None) -> None:
        super().__init__(*args)
        self.teacher = teacher  # the teacher whose output was refused (a store writer's put), else None


class CheckpointError(MT2KDError, ValueError):
    """A teacher or student checkpoint is malformed."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint file or folder does not exist."""


class FingerprintMismatchError(MT2KDError, ValueError):
    """The store was written by different teachers or options than requested."""


class TooManyFailuresError(MT2KDError, RuntimeError):
    """More cuts failed than the job allows (``max_failures``)."""
