"""Reading teacher outputs for evaluation: one store view, per-teacher arrays by cut ID."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

READ_BATCH = 64  # cuts per get_many call: enough to coalesce reads, small enough for frame data


def open_store_view(paths: Sequence[str]) -> Any:
    """Open one or several teacher stores as a single read-only view.

    Examples
    --------
    >>> store = open_store_view(["train.zarr", "dev.zarr"])  # doctest: +SKIP
    """
    from mt2kd.store import TeacherStore, open_stores

    if len(paths) == 1:
        return TeacherStore.open(paths[0])
    return open_stores(list(paths))


def spec_dims(store: Any) -> dict[str, int]:
    """Teacher name -> output dimension, from the store's specs."""
    return {name: int(spec.dim) for name, spec in store.specs.items()}


def iter_outputs(store: Any, cut_ids: Sequence[str], teacher: str) -> Iterator[tuple[str, np.ndarray]]:
    """(cut ID, array) for each cut the store holds an output of ``teacher`` for, in order.

    Cuts missing from the store, or present without this teacher (a failed
    or skipped extraction), are passed over; callers count them.
    """
    present = [cut_id for cut_id in cut_ids if cut_id in store]
    for start in range(0, len(present), READ_BATCH):
        chunk = present[start:start + READ_BATCH]
        for cut_id, outputs in zip(chunk, store.get_many(chunk, teachers=[teacher])):
            if teacher in outputs:
                yield cut_id, np.asarray(outputs[teacher])


def clip_outputs(store: Any, cut_ids: Sequence[str], teacher: str) -> dict[str, np.ndarray]:
    """Clip-level outputs (logits, embeddings) of one teacher, keyed by cut ID."""
    if teacher not in spec_dims(store):
        return {}
    return {cut_id: array.astype(np.float64) for cut_id, array in iter_outputs(store, cut_ids, teacher)}

