"""Corpora -> muxed CutSet -> bucketing sampler -> DataLoader, and the sampler's resume state.

Corpora are weighted by their size times their repeat count, so a corpus
repeated twice is drawn twice as often. The sampler lives in the main
process (map-style dataset); workers only load audio and targets.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mt2kd.cuts import check_manifests, manifest_error, open_manifest
from mt2kd.errors import ConfigError, MT2KDError
from mt2kd.train._data import KDDataset

if TYPE_CHECKING:
    from mt2kd.store import ReadableStore


def open_corpora(cut_paths: Sequence[str | Path], repeats: Sequence[int] = (), seed: int = 0) -> Any:
    """One lazy CutSet muxing every corpus, weighted by ``num_cuts x repeats``.

    Examples
    --------
    >>> cuts = open_corpora(["libri.jsonl.gz", "audioset.jsonl.gz"], repeats=[1, 2])  # doctest: +SKIP
    """
    return open_corpora_counted(cut_paths, repeats, seed)[0]


def open_corpora_counted(cut_paths: Sequence[str | Path], repeats: Sequence[int] = (),
                         seed: int = 0) -> tuple[Any, int]:
    """:func:`open_corpora` and the number of cuts it yields per epoch (repeats included)."""
    from lhotse import CutSet

    check_manifests(cut_paths)
    repeats = list(repeats) or [1] * len(cut_paths)
    corpora, weights = [], []
    for path, times in zip(cut_paths, repeats):
        cuts = open_manifest(path)  # audio paths relative to the manifest resolve as extraction resolves them
        try:
            num_cuts = sum(1 for _ in cuts)  # one cheap pass over the manifest, no audio
        except MT2KDError:
            raise
        except (OSError, ValueError, EOFError) as e:  # a gzip stream cut short, a line that is not JSON
            raise manifest_error(path, e) from e
        if num_cuts == 0:
            raise ConfigError(f"CutSet manifest {str(path)!r} must hold at least one cut. Got 0.")
        corpora.append(cuts.repeat(times) if times > 1 else cuts)
        weights.append(num_cuts * times)
    if len(corpora) == 1:
        return corpora[0], weights[0]
    return CutSet.mux(*corpora, weights=weights, seed=seed), sum(weights)


COVERAGE_SAMPLE = 1000  # cuts read from the head of each manifest to check it has targets


def check_target_coverage(cut_paths: Sequence[str | Path], store: ReadableStore) -> dict[str, float]:
    """Fraction of the first cuts of each manifest that have targets in ``store``; refuse all-zero.

    A store that does not belong to the manifests would otherwise train on
    nothing but zero losses. A corpus without any targets is only warned
    about when another corpus has some; none at all is a :class:`ConfigError`.

    Examples
    --------
    >>> check_target_coverage(["train.jsonl.gz"], store)  # doctest: +SKIP
    {'train.jsonl.gz': 1.0}
    """
    import itertools

    from mt2kd.train._data import target_source

    coverage = {}
    for path in cut_paths:
        try:
            head = list(itertools.islice(open_manifest(path), COVERAGE_SAMPLE))
        except MT2KDError:
            raise
        except (OSError, ValueError, EOFError) as e:  # a gzip stream cut short, a line that is not JSON
            raise manifest_error(path, e) from e
        found = sum(target_source(cut, store) is not None for cut in head)
        coverage[str(path)] = found / max(1, len(head))
    if not any(coverage.values()):
        raise ConfigError(
            f"the stores must hold targets for the cuts. Got none for the first {COVERAGE_SAMPLE} cuts of every "
            f"manifest ({', '.join(map(repr, coverage))}): are these the stores extracted from these manifests?"
        )
    for path, fraction in coverage.items():
        if fraction == 0:
            logging.getLogger(__name__).warning(
                "corpus %s: none of its first %d cuts has targets in the stores; its cuts train nothing",
                path, COVERAGE_SAMPLE)
    return coverage


def make_sampler(
    cuts: Any,
    max_duration: float,
    *,
    shuffle: bool = True,
    num_buckets: int = 30,
    buffer_size: int = 10_000,
    seed: int = 0,
    world_size: int = 1,
    rank: int = 0,
    num_cuts: int | None = None,
) -> Any:
    """DynamicBucketingSampler bounded by ``max_duration`` seconds, one shard of it per rank.

    Given ``num_cuts`` (the corpus size), a ``num_buckets`` beyond the cuts the
    bucket bounds are estimated from is lowered to that count (lhotse refuses
    more buckets than cuts), and the change is logged.
    """
    from lhotse.dataset import DynamicBucketingSampler

    num_estimate_cuts = min(buffer_size, 10_000)
    duration_bins = None
    if num_cuts is not None and num_buckets > min(num_cuts, num_estimate_cuts):
        fewer = min(num_cuts, num_estimate_cuts)
        logging.getLogger(__name__).info(
            "num_buckets=%d is more than the %d cuts the bucket bounds are estimated from: using %d bucket(s)",
            num_buckets, fewer, fewer)
        num_buckets = fewer
        if num_buckets < 2:  # lhotse estimates bounds for two buckets or more: one bound above every cut
            duration_bins = [float("inf")]
    sampler = DynamicBucketingSampler(
        cuts,
        max_duration=max_duration,
        shuffle=shuffle,
        num_buckets=num_buckets,
        duration_bins=duration_bins,
        buffer_size=buffer_size,
        num_cuts_for_bins_estimate=num_estimate_cuts,
        drop_last=world_size > 1,  # ranks must run the same number of steps
        seed=seed,
        world_size=world_size,
        rank=rank,
    )
    if not sampler.duration_bins:  # a few cuts can give no bound at all, which lhotse then averages
        sampler.duration_bins = [float("inf")]
    return sampler


def make_loader(
    sampler: Any, store_paths: Sequence[str], num_workers: int, teachers: Sequence[str] | None = None
) -> Any:
    """DataLoader over :class:`KDDataset`; batches come whole from the sampler (``batch_size=None``)."""
    import torch
    from torch.utils.data import DataLoader

    return DataLoader(
        KDDataset(store_paths, teachers),
        sampler=sampler,
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,  # no re-fork and store re-open every epoch
        # its own generator: starting an iterator must not draw from the global RNG that dropout uses,
        # or a resumed run's masks would be one draw off an uninterrupted run's
        generator=torch.Generator(),
    )


def sampler_state(sampler: Any, num_batches_consumed: int) -> dict[str, Any]:
    """The sampler's state_dict as of the last batch the trainer consumed.

    DataLoader workers prefetch, so the sampler itself has already yielded a
    few batches more than were trained on; its diagnostics (which lhotse
    uses to fast-forward on load) are rewound to what was consumed.
    """
    state = copy.deepcopy(sampler.state_dict())
    epoch = state["epoch"]
    stats = state["diagnostics"]["stats_per_epoch"].get(epoch)
    if stats is not None:
        stats["kept_batches"] = num_batches_consumed - stats["discarded_batches"]
    return state


def restore_sampler(sampler: Any, state: dict[str, Any]) -> None:
    """Load a state from :func:`sampler_state`: the next batch is the first one not yet trained on."""
    sampler.load_state_dict(copy.deepcopy(state))
