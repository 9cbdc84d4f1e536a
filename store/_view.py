"""The store as its readers see it: the typed border between ``mt2kd.store`` and training and evaluation.

Training and evaluation only join cuts to teacher outputs; they never write,
verify or inspect shards. :class:`ReadableStore` names exactly what they may
use, so a reader works the same on one :class:`TeacherStore` and on several
stores opened as one view (:class:`MultiStore`), and mypy says when a reader
reaches for more.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from mt2kd.store._spec import TeacherSpec


@runtime_checkable
class ReadableStore(Protocol):
    """Teacher outputs by cut ID, read-only: what :class:`TeacherStore` and :class:`MultiStore` both offer.

    Examples
    --------
    >>> def num_frames_of(store: ReadableStore, cut_id: str) -> int:
    ...     return len(store.get_many([cut_id], teachers=["whisper"])[0]["whisper"])
    """

    @property
    def specs(self) -> Mapping[str, TeacherSpec]:
        """Teacher name -> spec of what it emits."""
        ...

    def __len__(self) -> int:
        ...

    def __contains__(self, cut_id: object) -> bool:
        ...

    def cut_ids(self) -> list[str]:
        ...

    def failures(self) -> list[dict[str, Any]]:
        """Every recorded failure: ``{"cut_id", "teacher", "reason", "shard"}``."""
        ...

    def get_many(self, cut_ids: Sequence[str], teachers: Iterable[str] | None = None
                 ) -> list[dict[str, np.ndarray]]:
        """``{teacher: array}`` of each cut, in order; a teacher with no output for a cut is left out."""
        ...

    def random_teacher_urls(self) -> list[str]:
        """URLs of the stores whose attrs say their teachers had random weights (not real labels)."""
        ...
