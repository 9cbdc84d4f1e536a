"""Several stores read as one: each cut ID must live in exactly one of them."""

from __future__ import annotations

import dataclasses
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from mt2kd.errors import ConfigError, CutNotFoundError, DuplicateCutError, StoreFormatError
from mt2kd.store._spec import TeacherSpec
from mt2kd.store._store import TeacherStore
from mt2kd.store._verify import Problem


class MultiStore:
    """A read-only view over several :class:`TeacherStore` (e.g. one per corpus).

    Teachers are the union of the stores' teachers; a teacher present in two
    stores must have the same kind, dim and frame rate in both.
    """

    def __init__(self, stores: Sequence[TeacherStore]) -> None:
        if not stores:
            raise ConfigError("open_stores needs at least one store. Got none.")
        self.stores = list(stores)
        self._specs = _merged_specs(self.stores)
        self._owner: dict[str, int] = {}
        for number, store in enumerate(self.stores):
            for cut_id in store.cut_ids():
                before = self._owner.setdefault(cut_id, number)
                if before != number:
                    raise DuplicateCutError(f"a cut ID must be in one store only. Got {cut_id!r} in both "
                                            f"{self.stores[before].url} and {store.url}.")

    @property
    def specs(self) -> dict[str, TeacherSpec]:
        return dict(self._specs)

    def __len__(self) -> int:
        return len(self._owner)

    def __contains__(self, cut_id: object) -> bool:
        return cut_id in self._owner

    def cut_ids(self) -> list[str]:
        return list(self._owner)

    def failures(self) -> list[dict[str, Any]]:
        return [{**f, "store": s.url} for s in self.stores for f in s.failures()]

    def get(self, cut_id: str) -> dict[str, np.ndarray]:
        return self.get_many([cut_id])[0]

    def get_many(self, cut_ids: Sequence[str], teachers: Iterable[str] | None = None
                 ) -> list[dict[str, np.ndarray]]:
        """``{teacher: array}`` per cut in order; each store reads its own cuts in one batch."""
        wanted = None if teachers is None else list(teachers)
        unknown = [t for t in wanted or [] if t not in self._specs]
        if unknown:
            raise ConfigError(f"teachers must be among {list(self._specs)}. Got {unknown}.")
        slots: dict[int, list[int]] = defaultdict(list)
        for slot, cut_id in enumerate(cut_ids):
            number = self._owner.get(cut_id)
            if number is None:
                raise CutNotFoundError(f"cut {cut_id!r} must be in one of the {len(self.stores)} stores. Got none.")
            slots[number].append(slot)
        out: list[dict[str, np.ndarray]] = [{} for _ in cut_ids]
        for number, chosen in slots.items():
            store = self.stores[number]
            mine = None if wanted is None else [t for t in wanted if t in store.specs]
            for slot, arrays in zip(chosen, store.get_many([cut_ids[s] for s in chosen], mine)):
                out[slot] = arrays
        return out

    def shapes(self, cut_id: str) -> dict[str, tuple[int, ...]]:
        """Shape of every stored teacher output of ``cut_id``, from the owning store's index."""
        return self._store_of(cut_id).shapes(cut_id)

    def num_frames(self, cut_id: str, teacher: str) -> int:
        """Frames of ``teacher`` stored for ``cut_id`` (0 when the owning store has none of that teacher)."""
        store = self._store_of(cut_id)
        if teacher not in store.specs and teacher in self._specs:
            return 0
        return store.num_frames(cut_id, teacher)

    def _store_of(self, cut_id: str) -> TeacherStore:
        number = self._owner.get(cut_id)
        if number is None:
            raise CutNotFoundError(f"cut {cut_id!r} must be in one of the {len(self.stores)} stores. Got none.")
        return self.stores[number]

    def verify(self, durations: Mapping[str, float] | None = None, complete: bool = False) -> list[Problem]:
        """Every store's problems (``store`` set to its URL, which ``str()`` puts first), plus manifest cuts in none.

        ``complete`` as in :meth:`TeacherStore.verify`, for each store.
        """
        problems: list[Problem] = []
        for number, store in enumerate(self.stores):  # each store read once, with its share of the manifest
            mine = None if durations is None else {c: d for c, d in durations.items() if self._owner.get(c) == number}
            problems += [dataclasses.replace(p, store=store.url) for p in store.verify(mine, complete)]
        if durations is not None:
            problems += [Problem("missing", f"cut {c!r} is in the manifest but in none of the stores", cut_id=c)
                         for c in durations if c not in self._owner]
        return problems

    def info(self) -> dict[str, Any]:
        infos = [s.info() for s in self.stores]
        return {"stores": infos, "num_cuts": len(self), "num_shards": sum(i["num_shards"] for i in infos),
                "num_failures": sum(i["num_failures"] for i in infos)}


def _merged_specs(stores: Sequence[TeacherStore]) -> dict[str, TeacherSpec]:
    merged: dict[str, TeacherSpec] = {}
    for store in stores:
        for name, spec in store.specs.items():
            seen = merged.setdefault(name, spec)
            if (seen.kind, seen.dim, seen.frame_rate) != (spec.kind, spec.dim, spec.frame_rate):
                raise StoreFormatError(f"teacher {name!r} must have one shape across stores. Got "
                                       f"{(seen.kind, seen.dim, seen.frame_rate)} and "
                                       f"{(spec.kind, spec.dim, spec.frame_rate)} in {store.url}.")
    return merged


def open_stores(paths: Iterable[str | os.PathLike[str] | TeacherStore]) -> MultiStore:
    """One read view over several stores; a cut ID in two of them is a DuplicateCutError.

    Examples
    --------
    >>> view = open_stores(["librispeech.zarr", "audioset.zarr"])  # doctest: +SKIP
    >>> view.get("1089-134686-0000")["whisper"].shape  # doctest: +SKIP
    (262, 2560)
    """
    return MultiStore([p if isinstance(p, TeacherStore) else TeacherStore.open(p) for p in paths])
