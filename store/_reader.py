"""The read hot path: byte ranges of shard files, decoded with numcodecs, no zarr calls.

A cut's rows of one teacher lie in consecutive inner chunks of one shard
file. ``get_many`` groups every requested (cut, teacher) by file, finds the
chunks they need (each once, even when two cuts share it), and cuts them
into *runs*: adjacent chunks read with one range read of at most
``MAX_RUN_BYTES``. A run is read into a reused per-thread buffer small
enough to stay in the CPU cache and decoded at once, straight into the
output arrays when a chunk belongs to one output only. Runs are spread over
a small thread pool (numcodecs releases the GIL while decompressing).

Fork safety: nothing here uses zarr (so no event-loop thread is involved).
File descriptors and the thread pool belong to the process that made them;
after ``fork`` (torch DataLoader workers) both are rebuilt on first use.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numcodecs
import numpy as np
from numcodecs.abc import Codec
from numcodecs.blosc import decompress as blosc_decompress

from mt2kd.errors import StoreFormatError
from mt2kd.store._format import (
    CHUNK_FILE,
    DATA,
    METADATA_FILE,
    decode_index,
    index_nbytes,
    make_codec,
    num_chunks_of,
    parse_metadata,
)
from mt2kd.store._fs import LocalLocation, Location
from mt2kd.store._index import ShardRecord
from mt2kd.store._spec import TeacherSpec

MAX_THREADS = 4  # threads decoding runs for one get / get_many
MAX_RUN_BYTES = 256 * 1024  # one range read: big enough to amortise a call, small enough for the L2 cache
MIN_RUNS_PER_THREAD = 2  # fewer runs than this per thread: decode in the calling thread
Request = tuple[int, int, int]  # (output slot, first row, end row) within one file
Item = tuple[int, int, "Codec | None", np.ndarray]  # (offset in run, nbytes, codec, array to decode into)
Copy = tuple[np.ndarray, np.ndarray]  # (rows of a decoded chunk, where they go)


class Run:
    """Adjacent chunks of one file, read with one range read and decoded together."""

    def __init__(self, path: str, start: int) -> None:
        self.path, self.start, self.end = path, start, start
        self.items: list[Item] = []

    def add(self, offset: int, nbytes: int, codec: Codec | None, target: np.ndarray) -> None:
        self.items.append((offset - self.start, nbytes, codec, target))
        self.end = offset + nbytes


class ChunkReader:
    """Reads row ranges of teacher data arrays, caching each file's chunk index."""

    def __init__(self, loc: Location, specs: Mapping[str, TeacherSpec], num_threads: int | None = None) -> None:
        self.loc, self.specs = loc, dict(specs)
        self.codecs: dict[str, Codec | None] = {
            t: make_codec(s.codec, s.codec_level, np.dtype(s.dtype).itemsize) for t, s in self.specs.items()}
        self._asked_threads = num_threads
        self.num_threads = num_threads or _default_threads()
        self._indexes: dict[str, np.ndarray] = {}  # path -> int64 [num_chunks, 2] (16 bytes a chunk)
        self._buffers = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        self._pid = os.getpid()

    # ------------------------------------------------------------ per-file facts

    def _chunk_index(self, record: ShardRecord, teacher: str) -> np.ndarray:
        path = f"{record.path}/{teacher}/{DATA}/{CHUNK_FILE}"
        index = self._indexes.get(path)
        if index is None:
            rows = record.teachers[teacher]
            self._check_metadata(record, teacher)
            num_chunks = num_chunks_of(rows.num_rows, rows.rows_per_chunk)
            tail = self.loc.read_ranges(path, [(rows.nbytes - index_nbytes(num_chunks), rows.nbytes)])[0]
            table = decode_index(tail, num_chunks, f"{self.loc.url}/{path}")
            index = self._indexes[path] = table.astype(np.int64)
        return index

    def _check_metadata(self, record: ShardRecord, teacher: str) -> None:
        path = f"{record.path}/{teacher}/{DATA}/{METADATA_FILE}"
        doc = parse_metadata(self.loc.read(path), f"{self.loc.url}/{path}")
        if doc.get("data_type") != self.specs[teacher].dtype:
            raise StoreFormatError(f"{self.loc.url}/{path}: data_type must be {self.specs[teacher].dtype!r} "
                                   f"as the spec says. Got {doc.get('data_type')!r}.")

    # ------------------------------------------------------------ reading

    def read(self, jobs: Sequence[tuple[ShardRecord, int]], teachers: Sequence[str]
             ) -> list[dict[str, np.ndarray]]:
        """``{teacher: array}`` for every (record, position) in ``jobs``, in order."""
        outputs: list[dict[str, np.ndarray]] = [{} for _ in jobs]
        by_file: dict[tuple[str, str], list[Request]] = defaultdict(list)
        records: dict[str, ShardRecord] = {}
        for slot, (record, position) in enumerate(jobs):
            records[record.name] = record
            for teacher in teachers:
                rows = record.teachers.get(teacher)
                if rows is None:
                    continue
                start, end = int(rows.offsets[position]), int(rows.offsets[position + 1])
                if end > start:
                    by_file[(record.name, teacher)].append((slot, start, end))
        runs: list[Run] = []
        copies: list[Copy] = []
        for (name, teacher), requests in by_file.items():
            self._plan_file(records[name], teacher, requests, outputs, runs, copies)
        self._run_all(runs)
        for source, target in copies:
            target[...] = source
        return outputs

    def _plan_file(self, record: ShardRecord, teacher: str, requests: list[Request],
                   outputs: list[dict[str, np.ndarray]], runs: list[Run], copies: list[Copy]) -> None:
        """Allocate the outputs of ``requests`` and plan the runs and copies that fill them."""
        spec = self.specs[teacher]
        step = record.teachers[teacher].rows_per_chunk
        index = self._chunk_index(record, teacher)
        dtype = np.dtype(spec.dtype)
        frames: dict[int, np.ndarray] = {}
        owners: dict[int, list[Request]] = defaultdict(list)  # chunk -> requests it holds rows of
        for slot, start, end in requests:
            out = np.empty((end - start, spec.dim), dtype=dtype)
            frames[slot] = out
            outputs[slot][teacher] = out if spec.kind == "frames" else out[0]
            for c in range(start // step, (end - 1) // step + 1):
                owners[c].append((slot, start, end))
        targets: dict[int, np.ndarray] = {}
        for c, holders in owners.items():
            slot, start, end = holders[0]
            if len(holders) == 1 and c * step >= start and (c + 1) * step <= end:
                targets[c] = frames[slot][c * step - start:(c + 1) * step - start]  # decode in place
                continue
            targets[c] = scratch = np.empty((step, spec.dim), dtype=dtype)
            for slot, start, end in holders:
                lo, hi = max(start, c * step), min(end, (c + 1) * step)
                copies.append((scratch[lo - c * step:hi - c * step], frames[slot][lo - start:hi - start]))
        path = f"{record.path}/{teacher}/{DATA}/{CHUNK_FILE}"
        codec = self.codecs[teacher]
        run: Run | None = None
        chunks = sorted(targets)
        for c, (offset, nbytes) in zip(chunks, index[chunks].tolist()):
            if run is None or offset != run.end or offset + nbytes - run.start > MAX_RUN_BYTES:
                run = Run(path, offset)
                runs.append(run)
            run.add(offset, nbytes, codec, targets[c])

    def _run_all(self, runs: list[Run]) -> None:
        if self._pid != os.getpid():  # forked: maybe a DataLoader worker, sharing the cores with its siblings
            self.num_threads = self._asked_threads or _default_threads()
        if not isinstance(self.loc, LocalLocation):
            self._run_remote(runs)
            return
        num_groups = min(self.num_threads, len(runs) // MIN_RUNS_PER_THREAD)
        if num_groups <= 1:
            for run in runs:
                self._run_local(run)
            return
        bounds = np.linspace(0, len(runs), num_groups + 1).astype(int)
        groups = [runs[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        list(self._executor().map(self._run_group, groups))

    def _run_group(self, runs: list[Run]) -> None:
        for run in runs:
            self._run_local(run)

    def _run_local(self, run: Run) -> None:
        view = self._buffer(run.end - run.start)
        self.loc.read_ranges_into(run.path, [(run.start, run.end)], [view])
        _decode(view, run.items)

    def _run_remote(self, runs: list[Run]) -> None:
        """Object stores: every range of a file in one ``cat_ranges`` call (concurrent when async)."""
        by_path: dict[str, list[Run]] = defaultdict(list)
        for run in runs:
            by_path[run.path].append(run)
        for path, mine in by_path.items():
            for run, raw in zip(mine, self.loc.read_ranges(path, [(r.start, r.end) for r in mine])):
                _decode(memoryview(raw), run.items)

    def _buffer(self, num_bytes: int) -> memoryview:
        """This thread's read buffer, grown (and touched: first-touch page faults are slow) as needed."""
        buffer = getattr(self._buffers, "buffer", None)
        if buffer is None or buffer.size < num_bytes:
            buffer = self._buffers.buffer = np.zeros(max(num_bytes, MAX_RUN_BYTES), dtype=np.uint8)
            buffer.fill(1)
        return memoryview(buffer)[:num_bytes]  # type: ignore[arg-type]

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None or self._pid != os.getpid():  # threads do not survive fork
            self._pool = ThreadPoolExecutor(max_workers=self.num_threads, thread_name_prefix="mt2kd-read")
            self._pid = os.getpid()
        return self._pool


def _default_threads() -> int:
    """Up to MAX_THREADS, sharing the cores with sibling torch DataLoader workers when in one."""
    num_cpus = os.cpu_count() or 1
    data = sys.modules.get("torch.utils.data")  # only if torch is already in use: never import it here
    info = data.get_worker_info() if data is not None else None
    if info is not None:
        num_cpus = max(1, num_cpus // max(1, int(info.num_workers)))
    return max(1, min(MAX_THREADS, num_cpus))


def _decode(raw: memoryview, items: list[Item]) -> None:
    for offset, nbytes, codec, target in items:
        blob = raw[offset:offset + nbytes]
        if codec is None:
            target[...] = np.frombuffer(blob, dtype=target.dtype).reshape(target.shape)
        elif isinstance(codec, numcodecs.Blosc):
            blosc_decompress(blob, target)  # the codec object's decode adds checks costing ~10 us a chunk
        else:
            codec.decode(blob, out=target)
