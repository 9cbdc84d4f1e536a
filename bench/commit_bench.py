"""What one more shard costs as a store grows: the per-task overhead of a long extraction run.

An extraction task writes one shard and commits it; before committing, the
writer checks that none of its cut IDs is in another committed shard, so it
needs the store's index of every cut. This bench fills a store with
``--shards`` committed shards of ``--cuts-per-shard`` cuts (a one-value
clip teacher, so the data is negligible and only the bookkeeping is timed),
then, at several fill levels, writes and commits one small shard two ways:

- fresh: ``TeacherStore.open`` then write and commit, as a task that opens
  the store itself does;
- reused: write and commit through one store object kept across commits,
  as the job's tasks do (the worker keeps the store for the run).

The anchor is the same commit into an empty store, timed in turn with the
other two at each level, and so is the reused commit with every fsync made a
no-op (``no fsync``: what putting the shard's files, names and record on disk
before the record is published costs) (after 20 untimed commits into it). Each cell is the
median of ``--repeat`` commits. A run of 10,000 h in 1 h shards of LibriSpeech-like
cuts makes 10,000 shards of about 300 cuts.

Usage: ``python bench/commit_bench.py [--shards 2000] [--cuts-per-shard 300]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import mt2kd.store._fs as store_fs
from mt2kd.store import TeacherSpec, TeacherStore

SPEC = TeacherSpec("beats", "clip", 1)
VALUE = {"beats": np.zeros(1, np.float32)}
WARMUP = 20  # untimed commits first: the first ones ran 2x slower


def fill(store: TeacherStore, first: int, last: int, cuts_per_shard: int) -> None:
    """Commit shards ``first`` .. ``last - 1`` of ``cuts_per_shard`` cuts each."""
    for shard in range(first, last):
        with store.shard_writer(shard) as writer:
            for i in range(cuts_per_shard):
                writer.put(f"s{shard}-c{i}", VALUE)


def time_commit(path: Path, store: TeacherStore | None, shard: int, cuts: int) -> float:
    """Seconds to (open the store, when ``store`` is None, and) write and commit one shard."""
    start = time.perf_counter()
    target = store if store is not None else TeacherStore.open(path, "a")
    fill(target, shard, shard + 1, cuts)
    return time.perf_counter() - start


def time_without_fsync(path: Path, store: TeacherStore, shard: int, cuts: int) -> float:
    """``time_commit`` with every fsync of the store a no-op (data, names and record left to the page cache)."""
    saved = store_fs.fsync
    store_fs.fsync = lambda fd: None
    try:
        return time_commit(path, store, shard, cuts)
    finally:
        store_fs.fsync = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=2000, help="committed shards at the last level")
    parser.add_argument("--cuts-per-shard", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=5, help="commits timed per cell (median)")
    args = parser.parse_args()
    levels = sorted({0, args.shards // 10, args.shards // 2, args.shards})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "store"
        store = TeacherStore.create(path, [SPEC])
        filled, probe = 0, 10**9  # probe shards get IDs far above the filled ones
        for level in levels:
            fill(store, filled, level, args.cuts_per_shard)
            filled = level
            empty_path = Path(tmp) / f"empty-{level}"  # the anchor, timed in turn with the others
            empty = TeacherStore.create(empty_path, [SPEC])
            for warm in range(WARMUP):  # untimed: first-use imports and caches
                time_commit(empty_path, empty, probe + warm, args.cuts_per_shard)
            probe += WARMUP
            times: dict[str, list[float]] = {"anchor": [], "fresh": [], "reused": [], "no fsync": []}
            for _ in range(args.repeat):
                times["anchor"].append(time_commit(empty_path, empty, probe, args.cuts_per_shard))
                times["fresh"].append(time_commit(path, None, probe, args.cuts_per_shard))
                times["reused"].append(time_commit(path, store, probe + 1, args.cuts_per_shard))
                times["no fsync"].append(time_without_fsync(path, store, probe + 2, args.cuts_per_shard))
                probe += 3
            rows.append((level, *(statistics.median(times[k]) for k in ("anchor", "fresh", "reused", "no fsync"))))
    print(f"one more shard of {args.cuts_per_shard} cuts (clip teacher, 1 value), median of {args.repeat}; "
          f"anchor: the same commit into an empty store, timed in turn")
    print(f"{'committed shards':>16} {'cuts in store':>14} {'anchor s':>9} {'fresh open s':>13} {'x anchor':>9} "
          f"{'reused s':>9} {'x anchor':>9} {'no fsync s':>11} {'x anchor':>9}")
    for level, anchor, fresh, reused, unsynced in rows:
        print(f"{level:16,d} {level * args.cuts_per_shard:14,d} {anchor:9.4f} {fresh:13.4f} {fresh / anchor:9.2f} "
              f"{reused:9.4f} {reused / anchor:9.2f} {unsynced:11.4f} {unsynced / anchor:9.2f}")


if __name__ == "__main__":
    main()
