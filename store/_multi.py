"""Several stores read as one: each (cut ID, teacher) pair must live in exactly one of them.

A corpus gains a teacher by extracting it into a new store: the view then
reads that teacher of a cut from the new store and the others from the old
one. A teacher name used in several stores must be the same teacher (same
shape and fingerprint) in each.
"""

from __future__ import annotations

import dataclasses
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from mt2kd.errors import ConfigError, CutNotFoundError, DuplicateCutError, FingerprintMismatchError, StoreFormatError
from mt2kd.store._spec import TeacherSpec
from mt2kd.store._store import TeacherStore
from mt2kd.store._verify import Problem


class MultiStore:
    """A read-only view over several :class:`TeacherStore` (one per corpus, or one per added teacher).

    Teachers are the union of the stores' teachers; a teacher present in two
    stores must have the same kind, dim, frame rate and fingerprint in both.
    A cut may sit in several stores as long as no teacher output of it is
    stored twice.
    """

    def __init__(self, stores: Sequence[TeacherStore]) -> None:
        if not stores:
            raise ConfigError("open_stores needs at least one store. Got none.")
        self.stores = list(stores)
        self._specs = _merged_specs(self.stores)
        self._owners: dict[str, tuple[int, ...]] = {}  # cut ID -> the stores holding it, in store order
        interned: dict[tuple[int, ...], tuple[int, ...]] = {}  # one tuple object per combination, not per cut
        for number, store in enumerate(self.stores):
            alone = interned.setdefault((number,), (number,))
            for cut_id in store.cut_ids():
                before = self._owners.get(cut_id)
                if before is None:
                    self._owners[cut_id] = alone
                    continue
                for other in before:
                    self._check_disjoint(cut_id, other, number)
                key = before + (number,)
                self._owners[cut_id] = interned.setdefault(key, key)

    def _check_disjoint(self, cut_id: str, first: int, second: int) -> None:
        """Refuse a teacher output of ``cut_id`` stored in both stores (read from their indexes, no data)."""
        a, b = self.stores[first], self.stores[second]
        shared = [t for t in a.shapes(cut_id) if t in b.shapes(cut_id)]
        if shared:
            raise DuplicateCutError(f"a (cut, teacher) pair must be in one store only. Got cut {cut_id!r} with "
                                    f"teacher(s) {shared} in both {a.url} and {b.url}.")

    @property
    def specs(self) -> dict[str, TeacherSpec]:
        return dict(self._specs)

    def __len__(self) -> int:
        return len(self._owners)

    def __contains__(self, cut_id: object) -> bool:
        return cut_id in self._owners

    def cut_ids(self) -> list[str]:
        return list(self._owners)

    def failures(self) -> list[dict[str, Any]]:
        return [{**f, "store": s.url} for s in self.stores for f in s.failures()]

    def random_teacher_urls(self) -> list[str]:
        return [url for s in self.stores for url in s.random_teacher_urls()]

    def get(self, cut_id: str) -> dict[str, np.ndarray]:
        return self.get_many([cut_id])[0]

    def get_many(self, cut_ids: Sequence[str], teachers: Iterable[str] | None = None
                 ) -> list[dict[str, np.ndarray]]:
        """``{teacher: array}`` per cut in order; one batched read per store that holds any of them."""
        wanted = None if teachers is None else list(teachers)
        unknown = [t for t in wanted or [] if t not in self._specs]
        if unknown:
            raise ConfigError(f"teachers must be among {list(self._specs)}. Got {unknown}.")
        slots: dict[int, list[int]] = defaultdict(list)
        for slot, cut_id in enumerate(cut_ids):
            numbers = self._owners.get(cut_id)
            if numbers is None:
                raise CutNotFoundError(f"cut {cut_id!r} must be in one of the {len(self.stores)} stores. Got none.")
            for number in numbers:
                slots[number].append(slot)
        out: list[dict[str, np.ndarray]] = [{} for _ in cut_ids]
        for number, chosen in sorted(slots.items()):
            store = self.stores[number]
            mine = None if wanted is None else [t for t in wanted if t in store.specs]
            if mine == []:  # this store holds none of the teachers asked for: nothing to read
                continue
            for slot, arrays in zip(chosen, store.get_many([cut_ids[s] for s in chosen], mine)):
                out[slot].update(arrays)
        return out

    def shapes(self, cut_id: str) -> dict[str, tuple[int, ...]]:
        """Shape of every stored teacher output of ``cut_id``, from the indexes of the stores holding it."""
        shapes: dict[str, tuple[int, ...]] = {}
        for store in self._stores_of(cut_id):
            shapes.update(store.shapes(cut_id))
        return shapes

    def num_frames(self, cut_id: str, teacher: str) -> int:
        """Frames of ``teacher`` stored for ``cut_id`` (0 when no store holding the cut has that output)."""
        stores = self._stores_of(cut_id)
        if teacher in self._specs and self._specs[teacher].kind == "frames":
            return max((s.num_frames(cut_id, teacher) for s in stores if teacher in s.specs), default=0)
        return stores[0].num_frames(cut_id, teacher)  # not a frames teacher: the store's own error names it

    def _stores_of(self, cut_id: str) -> list[TeacherStore]:
        numbers = self._owners.get(cut_id)
        if numbers is None:
            raise CutNotFoundError(f"cut {cut_id!r} must be in one of the {len(self.stores)} stores. Got none.")
        return [self.stores[n] for n in numbers]

    def verify(self, durations: Mapping[str, float] | None = None, complete: bool = False) -> list[Problem]:
        """Every store's problems (``store`` set to its URL, which ``str()`` puts first), plus manifest cuts in none.

        ``complete`` as in :meth:`TeacherStore.verify`, for each store.
        """
        problems: list[Problem] = []
        for number, store in enumerate(self.stores):  # each store read once, with its share of the manifest
            mine = None if durations is None else {
                c: d for c, d in durations.items() if number in self._owners.get(c, ())}
            problems += [dataclasses.replace(p, store=store.url) for p in store.verify(mine, complete)]
        if durations is not None:
            problems += [Problem("missing", f"cut {c!r} is in the manifest but in none of the stores", cut_id=c)
                         for c in durations if c not in self._owners]
        return problems

    def info(self) -> dict[str, Any]:
        infos = [s.info() for s in self.stores]
        return {"stores": infos, "num_cuts": len(self), "num_shards": sum(i["num_shards"] for i in infos),
                "num_failures": sum(i["num_failures"] for i in infos)}


def _merged_specs(stores: Sequence[TeacherStore]) -> dict[str, TeacherSpec]:
    merged: dict[str, tuple[TeacherSpec, str]] = {}  # teacher -> (its spec, the first store holding it)
    for store in stores:
        for name, spec in store.specs.items():
            seen, where = merged.setdefault(name, (spec, store.url))
            if (seen.kind, seen.dim, seen.frame_rate) != (spec.kind, spec.dim, spec.frame_rate):
                raise StoreFormatError(f"teacher {name!r} must have one shape across stores. Got "
                                       f"{(seen.kind, seen.dim, seen.frame_rate)} in {where} and "
                                       f"{(spec.kind, spec.dim, spec.frame_rate)} in {store.url}.")
            check_same_teacher(seen, where, spec, store.url)
    return {name: spec for name, (spec, _) in merged.items()}


def check_same_teacher(first: TeacherSpec, first_where: str, second: TeacherSpec, second_where: str) -> None:
    """Refuse one teacher name carrying two fingerprints (other weights or options), naming both places.

    The message lists the options (``spec.config``) whose values differ; when
    none does, the checkpoints themselves differ.

    Examples
    --------
    >>> a = TeacherSpec("ecapa", "clip", 4, fingerprint="aa", config={"precision": "fp32"})
    >>> check_same_teacher(a, "a.zarr", dataclasses.replace(a, fingerprint="bb", config={"precision": "bf16"}),
    ...                    "b.zarr")
    Traceback (most recent call last):
    ...
    mt2kd.errors.FingerprintMismatchError: teacher 'ecapa' must be the same teacher in every store. Got ...
    """
    if first.fingerprint == second.fingerprint:
        return
    keys = sorted(set(first.config) | set(second.config))
    differ = [f"{k} ({first.config.get(k)!r} in {first_where}, {second.config.get(k)!r} in {second_where})"
              for k in keys if first.config.get(k) != second.config.get(k)]
    options = "; differing options: " + ", ".join(differ) if differ else (
        "; the options are equal, so the checkpoints differ")
    raise FingerprintMismatchError(
        f"teacher {first.name!r} must be the same teacher in every store. Got fingerprint "
        f"{first.fingerprint or '(none)'} in {first_where} and {second.fingerprint or '(none)'} in {second_where}"
        f"{options}.")


def open_stores(paths: Iterable[str | os.PathLike[str] | TeacherStore]) -> MultiStore:
    """One read view over several stores; a (cut, teacher) pair in two of them is a DuplicateCutError.

    Examples
    --------
    >>> view = open_stores(["librispeech.zarr", "librispeech-ecapa.zarr", "audioset.zarr"])  # doctest: +SKIP
    >>> # whisper and beats from the first store, ecapa from the second
    >>> sorted(view.get("1089-134686-0000"))  # doctest: +SKIP
    ['beats', 'ecapa', 'whisper']
    """
    return MultiStore([p if isinstance(p, TeacherStore) else TeacherStore.open(p) for p in paths])


def open_view(paths: Sequence[str | os.PathLike[str]]) -> TeacherStore | MultiStore:
    """What a reader reads from: the one store of ``paths``, or all of them as one :func:`open_stores` view.

    Examples
    --------
    >>> store = open_view(["train.zarr"])  # doctest: +SKIP
    >>> "cut-1" in store  # doctest: +SKIP
    True
    """
    if len(paths) == 1:
        return TeacherStore.open(paths[0])
    return open_stores(paths)
