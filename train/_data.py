"""The KD dataset: a lhotse CutSet batch in, padded fbank and masked teacher targets out.

Targets are joined by cut ID from one or several teacher stores. Which store
ID a cut reads is decided by :func:`target_id`:

- a MixedCut with an ID of its own that the store holds was extracted as
  mixed (a corpus mixed before extraction); any other MixedCut (mixed on
  the fly, e.g. with noise) reads the targets of its first track;
- a cut whose audio is time-altered (speed or tempo perturbation, of any
  track) has no valid targets: the teachers saw other audio with another
  frame count;
- an ID that ``CutSet.repeat()`` suffixed (``_repeatN``) maps back to the
  original when the suffixed ID itself is not in the store.

A missing target is a False in the ``present`` mask, with zero padding in
``values``; never a dummy array passed off as real.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mt2kd.cuts import SAMPLE_RATE, is_time_altered
from mt2kd.cuts import target_source as stored_source
from mt2kd.train._features import compute_fbank

if TYPE_CHECKING:
    from mt2kd.store import ReadableStore

log = logging.getLogger(__name__)

_warned_perturbed = False  # one warning per process, not one per cut
_warned_length = False  # likewise for frame targets whose length does not fit the cut
FRAME_TOLERANCE = 2.0  # frames; teacher front-ends round a cut's length to within a frame or so


def target_source(cut: Any, store: ReadableStore) -> tuple[str, Any] | None:
    """:func:`mt2kd.cuts.target_source`, warning once per process that perturbed cuts read no targets."""
    if is_time_altered(cut):
        _warn_perturbed(cut.id)
        return None
    return stored_source(cut, store)


def target_id(cut: Any, store: ReadableStore) -> str | None:
    """The store cut ID whose targets belong to ``cut`` (see :func:`target_source`), or None.

    Examples
    --------
    >>> target_id(cut.repeat(2)[1], store)  # doctest: +SKIP
    'cut-0001'
    """
    found = target_source(cut, store)
    return None if found is None else found[0]


def _warn_perturbed(cut_id: str) -> None:
    global _warned_perturbed
    if not _warned_perturbed:
        _warned_perturbed = True
        log.warning(
            "cut %s is speed/tempo-perturbed: its teacher targets are masked (the teachers saw the "
            "unperturbed audio). Further perturbed cuts are masked without this warning.",
            cut_id,
        )


class LazyStores:
    """Teacher stores opened on first use in each process.

    zarr v3 drives its I/O from an asyncio loop on a thread, and a thread does
    not survive ``fork``: a DataLoader worker must open its own handle.
    """

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = [str(p) for p in paths]
        self._store: ReadableStore | None = None
        self._pid: int | None = None

    def get(self) -> ReadableStore:
        if self._store is None or self._pid != os.getpid():
            from mt2kd.store import open_view

            self._store = open_view(self.paths)
            self._pid = os.getpid()
        return self._store

    def __getstate__(self) -> dict[str, Any]:  # spawn/pickle: ship paths only
        return {"paths": self.paths, "_store": None, "_pid": None}


def _missing_audio(cut: Any) -> str | None:
    """The first audio file of a plain cut that does not exist (lhotse's error for it is many lines long)."""
    recording = getattr(cut, "recording", None)
    for source in getattr(recording, "sources", None) or []:
        if source.type == "file" and not os.path.exists(source.source):
            return str(source.source)
    return None


def _load_audio(cut: Any) -> np.ndarray:
    missing = _missing_audio(cut)
    if missing is not None:
        raise FileNotFoundError(f"audio file {missing!r} does not exist")
    if cut.sampling_rate != SAMPLE_RATE:
        cut = cut.resample(SAMPLE_RATE)
    audio = cut.load_audio()
    return audio.mean(axis=0) if audio.ndim == 2 else audio


def _pad_fbank(feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([f.shape[0] for f in feats], dtype=torch.long)
    padded = torch.zeros(len(feats), int(lengths.max()), feats[0].shape[1])
    for i, f in enumerate(feats):
        padded[i, : f.shape[0]] = f
    return padded, lengths


def _collate_frames(rows: list[np.ndarray | None], dim: int) -> dict[str, torch.Tensor]:
    """Pad to ``[B, T, dim]`` in the stored dtype (float16 frames stay float16: half the copy and transfer)."""
    lengths = torch.tensor([0 if r is None else r.shape[0] for r in rows], dtype=torch.long)
    stored = next((r.dtype for r in rows if r is not None), np.dtype(np.float32))
    dtype = torch.from_numpy(np.zeros(0, stored)).dtype
    values = torch.zeros(len(rows), max(1, int(lengths.max())), dim, dtype=dtype)
    for i, r in enumerate(rows):
        if r is not None:
            values[i, : r.shape[0]] = torch.from_numpy(np.ascontiguousarray(r, dtype=stored))
    return {"values": values, "lengths": lengths, "present": lengths > 0}


def _collate_clip(rows: list[np.ndarray | None], dim: int) -> dict[str, torch.Tensor]:
    values = torch.zeros(len(rows), dim)
    for i, r in enumerate(rows):
        if r is not None:
            values[i] = torch.from_numpy(np.asarray(r, dtype=np.float32))
    return {"values": values, "present": torch.tensor([r is not None for r in rows])}


def fetch_targets(
    cuts: Sequence[Any], store: ReadableStore, teachers: Sequence[str] | None = None
) -> dict[str, dict[str, torch.Tensor]]:
    """Targets of ``cuts`` from ``store``, collated per teacher with presence masks.

    ``teachers`` limits what is read (default: every teacher of the store);
    a name the store lacks is left out of the result, which the losses read
    as "no cut has it".
    """
    names = [n for n in (store.specs if teachers is None else teachers) if n in store.specs]
    sources = [target_source(cut, store) for cut in cuts]
    ids = [None if found is None else found[0] for found in sources]
    wanted = list(dict.fromkeys(i for i in ids if i is not None))
    fetched = dict(zip(wanted, store.get_many(wanted, teachers=names))) if wanted and names else {}
    targets = {}
    for name in names:
        spec = store.specs[name]
        rows = [fetched[i].get(name) if i in fetched else None for i in ids]
        if spec.kind == "frames":
            rows = [None if found is None else _checked_frames(r, found[1], spec.frame_rate)
                    for r, found in zip(rows, sources)]
        collate = _collate_frames if spec.kind == "frames" else _collate_clip
        targets[name] = collate(rows, spec.dim)
    return targets


def _checked_frames(row: np.ndarray | None, cut: Any, frame_rate: float | None) -> np.ndarray | None:
    """``row`` if its length fits the duration of ``cut`` (the one its targets were computed on), else None.

    A cut cut out of a longer one (``truncate``, windows) keeps an ID whose
    stored frames cover other audio; truncating those to the shorter length
    would train on misaligned targets without anyone noticing.
    """
    if row is None:
        return None
    expected = cut.duration * float(frame_rate or 0.0)  # a frames teacher's spec always has its rate
    if abs(row.shape[0] - expected) <= FRAME_TOLERANCE:
        return row
    global _warned_length
    if not _warned_length:
        _warned_length = True
        log.warning(
            "cut %s: stored frames must number about %.0f (duration x %g Hz). Got %d; masking its frame "
            "targets (further such cuts are masked without this warning).",
            cut.id, expected, frame_rate, row.shape[0],
        )
    return None


class KDDataset(Dataset):
    """Map-style lhotse dataset: the sampler yields a CutSet, this returns a batch dict.

    Batch keys: ``cut_ids``, ``fbank`` ``[B, T100, 80]``, ``num_frames`` ``[B]``,
    ``duration`` (s of audio), ``targets`` (teacher -> ``values``/``present``
    [/``lengths``]), ``dropped`` (cut ID -> why its audio could not be read:
    such a cut is left out of the batch; a batch left empty has only
    ``cut_ids`` (empty), ``dropped`` and ``duration``).

    Examples
    --------
    >>> dataset = KDDataset(["teachers.zarr"])  # doctest: +SKIP
    >>> loader = DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=2)  # doctest: +SKIP
    """

    def __init__(self, store_paths: Sequence[str], teachers: Sequence[str] | None = None) -> None:
        self.stores = LazyStores(store_paths)
        self.teachers = None if teachers is None else list(teachers)  # None: every teacher in the store

    def __getitem__(self, cuts: Any) -> dict[str, Any]:
        feats, kept, dropped = [], [], {}
        for cut in cuts:
            try:
                feats.append(compute_fbank(_load_audio(cut)))
            except MemoryError:  # not the cut's fault: dropping every cut from here on would hide it
                raise
            except Exception as e:  # missing, corrupt or empty audio: drop the cut, keep its reason
                dropped[cut.id] = unreadable_reason(e)
                continue
            kept.append(cut)
        if not kept:  # nothing left to train on: the trainer skips the batch
            return {"cut_ids": [], "dropped": dropped, "duration": 0.0}
        fbank, num_frames = _pad_fbank(feats)
        return {
            "cut_ids": [c.id for c in kept],
            "dropped": dropped,
            "fbank": fbank,
            "num_frames": num_frames,
            "duration": float(sum(c.duration for c in kept)),
            # no stores (stage 2 without KD terms): no targets, which the losses read as "no cut has them"
            "targets": fetch_targets(kept, self.stores.get(), self.teachers) if self.stores.paths else {},
        }


def unreadable_reason(error: Exception, limit: int = 300) -> str:
    """One line saying why a cut's audio could not be used (lhotse's messages span several lines)."""
    text = " ".join(str(error).split())
    reason = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return reason if len(reason) <= limit else reason[: limit - 3] + "..."
