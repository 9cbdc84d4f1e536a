"""What a run reads: the cuts (which to score, their speakers and event labels) and the teachers' outputs.

Speakers come from the supervisions (the first supervision that names one);
event labels from ``cut.custom["events"]`` (a list of label names or class
indices) or, in icefall's AudioSet manifests, ``supervisions[0].audio_event``
(``;``-separated class indices); training reads them the same way. A cut
with neither is unlabelled and left out of mAP; a cut whose ``events`` is an
empty list is labelled "no event". Teacher
outputs are read from one store or several opened as one view; cuts missing
from the store, or stored without a given teacher, are passed over and
counted by the callers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mt2kd.cuts import canonical_cut_id, check_manifests, manifest_error, open_manifest
from mt2kd.errors import DuplicateCutError, MT2KDError
from mt2kd.eval._tagging import events_to_multi_hot
from mt2kd.train import cut_events, cut_speaker

if TYPE_CHECKING:
    from mt2kd.store import ReadableStore

READ_BATCH = 64  # cuts per get_many call: enough to coalesce reads, small enough for frame data


def load_cuts(paths: Sequence[str], max_cuts: int | None = None) -> list[Any]:
    """Read CutSet manifests in order, keep the first ``max_cuts`` cuts.

    Examples
    --------
    >>> cuts = load_cuts(["dev.jsonl.gz"], max_cuts=100)  # doctest: +SKIP
    """
    check_manifests(paths)
    cuts: list[Any] = []
    source_of: dict[str, str] = {}
    for path in paths:
        try:
            if not _read_cuts(path, cuts, source_of, max_cuts):
                return cuts
        except (OSError, ValueError, EOFError) as e:  # a gzip stream cut short, a line that is not JSON
            if isinstance(e, MT2KDError):
                raise
            raise manifest_error(path, e) from e
    return cuts


def _read_cuts(path: str, cuts: list[Any], source_of: dict[str, str], max_cuts: int | None) -> bool:
    """Append the cuts of one manifest; False once ``max_cuts`` are read."""
    for cut in open_manifest(path):
        if max_cuts is not None and len(cuts) >= max_cuts:
            return False
        if cut.id in source_of:
            raise DuplicateCutError(
                f"cut IDs must be unique across manifests. Got {cut.id!r} in {source_of[cut.id]} and {path}.")
        source_of[cut.id] = str(path)
        cuts.append(cut)
    return True


def merge_repeat_copies(cuts: Sequence[Any], store: ReadableStore) -> tuple[list[Any], dict[str, str]]:
    """Give each cut the ID its teacher outputs are stored under; keep one cut per ID.

    A manifest written after ``CutSet.repeat()`` names its copies
    ``<id>_repeatN``: they read the original's outputs (as training does),
    and the copies after the first are dropped, so the same audio is neither
    scored twice nor paired with itself in a speaker trial. Returns the kept
    cuts and ``{dropped copy ID: the ID it merged into}``.

    Examples
    --------
    >>> cuts, merged = merge_repeat_copies(load_cuts(["dev_x2.jsonl.gz"]), store)  # doctest: +SKIP
    >>> merged  # doctest: +SKIP
    {'utt-1_repeat1': 'utt-1', ...}
    """
    kept: list[Any] = []
    seen: set[str] = set()
    merged: dict[str, str] = {}
    for cut in cuts:
        cut_id = canonical_cut_id(cut.id, store)
        if cut_id in seen:
            merged[cut.id] = cut_id
            continue
        seen.add(cut_id)
        kept.append(cut if cut_id == cut.id else cut.with_id(cut_id))
    return kept, merged


def speaker_of(cut: Any) -> str | None:
    """The first speaker named by the cut's supervisions, if any."""
    return cut_speaker(cut)


def speakers(cuts: Sequence[Any]) -> dict[str, str]:
    """Cut ID -> speaker for the cuts that have one."""
    found = {cut.id: speaker_of(cut) for cut in cuts}
    return {cut_id: spk for cut_id, spk in found.items() if spk is not None}


def audio_paths(cuts: Sequence[Any]) -> dict[str, str]:
    """Cut ID -> the path of its audio file (the first file source of its recording), for cuts that have one."""
    found = {}
    for cut in cuts:
        sources = getattr(getattr(cut, "recording", None), "sources", None) or []
        paths = [s.source for s in sources if s.type == "file"]
        if paths:
            found[cut.id] = str(paths[0])
    return found


def has_events(cut: Any) -> bool:
    return cut_events(cut) is not None


def event_targets(cuts: Sequence[Any], num_classes: int, label_index: dict[str, int] | None,
                  label_file: str | None = None) -> tuple[list[str], np.ndarray]:
    """IDs of the labelled cuts and their multi-hot targets [num_labelled, num_classes]."""
    labelled = [cut for cut in cuts if has_events(cut)]
    targets = np.zeros((len(labelled), num_classes), dtype=bool)
    for row, cut in enumerate(labelled):
        targets[row] = events_to_multi_hot(cut_events(cut) or [], num_classes, label_index, cut.id, label_file)
    return [cut.id for cut in labelled], targets


def sigmoid(logits: np.ndarray) -> np.ndarray:
    # written via tanh so that large negative logits do not overflow exp()
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(logits, dtype=np.float64)))


def spec_dims(store: ReadableStore) -> dict[str, int]:
    """Teacher name -> output dimension, from the store's specs."""
    return {name: int(spec.dim) for name, spec in store.specs.items()}


def iter_outputs(store: ReadableStore, cut_ids: Sequence[str], teacher: str) -> Iterator[tuple[str, np.ndarray]]:
    """(cut ID, array) for each cut the store holds an output of ``teacher`` for, in order."""
    present = [cut_id for cut_id in cut_ids if cut_id in store]
    for start in range(0, len(present), READ_BATCH):
        chunk = present[start:start + READ_BATCH]
        for cut_id, outputs in zip(chunk, store.get_many(chunk, teachers=[teacher])):
            if teacher in outputs:
                yield cut_id, np.asarray(outputs[teacher])


def clip_outputs(store: ReadableStore, cut_ids: Sequence[str], teacher: str) -> dict[str, np.ndarray]:
    """Clip-level outputs (logits, embeddings) of one teacher, keyed by cut ID."""
    if teacher not in spec_dims(store):
        return {}
    return {cut_id: array.astype(np.float64) for cut_id, array in iter_outputs(store, cut_ids, teacher)}

