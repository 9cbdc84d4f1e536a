"""The read hot path: byte ranges of shard files, decoded with numcodecs, no zarr calls.

A cut's rows of one teacher lie in a run of consecutive inner chunks of one
shard file. ``get_many`` groups every requested (cut, teacher) by file,
reads each file's needed chunks with as few range reads as possible
(adjacent chunks merged into one read), decodes each chunk once, and copies
rows into the outputs; chunks that lie wholly inside one output are decoded
straight into it. Files of different shards are read on a small thread pool
(numcodecs releases the GIL while decompressing).

Fork safety: nothing here holds zarr's event loop. File descriptors and the
thread pool belong to the process that made them; after ``fork`` (torch
DataLoader workers) both are rebuilt on first use in the child.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any
from concurrent.futures import ThreadPoolExecutor

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
from mt2kd.store._fs import Location
from mt2kd.store._index import ShardRecord
from mt2kd.store._spec import TeacherSpec

MAX_THREADS = 4  # threads decoding chunks for one get / get_many
MIN_CHUNKS_PER_THREAD = 4  # fewer chunks than this per thread: decode in the calling thread
Request = tuple[int, int, int]  # (output slot, first row, end row) within one file
Decode = tuple[Any, "Codec | None", np.ndarray]  # (encoded chunk, codec, array to decode it into)
Copy = tuple[np.ndarray, np.ndarray]  # (rows of a decoded chunk, where they go)


class ChunkReader:
    """Reads row ranges of teacher data arrays, caching each file's chunk index."""

    def __init__(self, loc: Location, specs: Mapping[str, TeacherSpec]) -> None:
        self.loc, self.specs = loc, dict(specs)
        self.codecs: dict[str, Codec | None] = {
            t: make_codec(s.codec, s.codec_level, np.dtype(s.dtype).itemsize) for t, s in self.specs.items()}
        self._indexes: dict[str, np.ndarray] = {}
        self.num_threads = min(MAX_THREADS, os.cpu_count() or 1)
        self._pool: ThreadPoolExecutor | None = None
        self._pid = os.getpid()

    def _chunk_index(self, record: ShardRecord, teacher: str) -> np.ndarray:
        path = f"{record.path}/{teacher}/{DATA}/{CHUNK_FILE}"
        index = self._indexes.get(path)
        if index is None:
            rows = record.teachers[teacher]
            self._check_metadata(record, teacher)
            num_chunks = num_chunks_of(rows.num_rows, rows.rows_per_chunk)
            tail = self.loc.read_ranges(path, [(rows.nbytes - index_nbytes(num_chunks), rows.nbytes)])[0]
            index = self._indexes[path] = decode_index(tail, num_chunks, f"{self.loc.url}/{path}")
        return index

    def _check_metadata(self, record: ShardRecord, teacher: str) -> None:
        path = f"{record.path}/{teacher}/{DATA}/{METADATA_FILE}"
        doc = parse_metadata(self.loc.read(path), f"{self.loc.url}/{path}")
        if doc.get("data_type") != self.specs[teacher].dtype:
            raise StoreFormatError(f"{self.loc.url}/{path}: data_type must be {self.specs[teacher].dtype!r} "
                                   f"as the spec says. Got {doc.get('data_type')!r}.")

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
        decodes: list[Decode] = []
        copies: list[Copy] = []
        for (name, teacher), requests in by_file.items():
            self._plan_file(records[name], teacher, requests, outputs, decodes, copies)
        self._decode_all(decodes)
        for source, target in copies:
            target[...] = source
        return outputs

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None or self._pid != os.getpid():  # threads do not survive fork
            self._pool = ThreadPoolExecutor(max_workers=self.num_threads, thread_name_prefix="mt2kd-read")
            self._pid = os.getpid()
        return self._pool

    def _decode_all(self, decodes: list[Decode]) -> None:
        """Decode every chunk; big batches in a few groups on the pool (the codecs release the GIL)."""
        num_groups = min(self.num_threads, len(decodes) // MIN_CHUNKS_PER_THREAD)
        if num_groups <= 1:
            _decode_group(decodes)
            return
        bounds = np.linspace(0, len(decodes), num_groups + 1).astype(int)
        groups = [decodes[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        list(self._executor().map(_decode_group, groups))

    def _plan_file(self, record: ShardRecord, teacher: str, requests: list[Request],
                   outputs: list[dict[str, np.ndarray]], decodes: list[Decode], copies: list[Copy]) -> None:
        """Fetch the chunks ``requests`` need from one file; queue their decoding and row copies."""
        spec = self.specs[teacher]
        step = record.teachers[teacher].rows_per_chunk
        index = self._chunk_index(record, teacher)
        dtype = np.dtype(spec.dtype)
        frames: dict[int, np.ndarray] = {}
        owners: dict[int, list[int]] = defaultdict(list)  # chunk -> slots whose rows it holds
        for slot, start, end in requests:
            out = np.empty((end - start, spec.dim), dtype=dtype)
            frames[slot] = out
            outputs[slot][teacher] = out if spec.kind == "frames" else out[0]
            for c in range(start // step, (end - 1) // step + 1):
                owners[c].append(slot)
        blobs = self._fetch(f"{record.path}/{teacher}/{DATA}/{CHUNK_FILE}", index, sorted(owners))
        codec = self.codecs[teacher]
        for (slot, start, end) in requests:
            for c in range(start // step, (end - 1) // step + 1):
                inside = c * step >= start and (c + 1) * step <= end and len(owners[c]) == 1
                if inside:  # decode straight into the output
                    decodes.append((blobs[c], codec, frames[slot][c * step - start:(c + 1) * step - start]))
        scratch: dict[int, np.ndarray] = {}
        for slot, start, end in requests:
            for c in range(start // step, (end - 1) // step + 1):
                if c * step >= start and (c + 1) * step <= end and len(owners[c]) == 1:
                    continue
                if c not in scratch:
                    scratch[c] = np.empty((step, spec.dim), dtype=dtype)
                    decodes.append((blobs[c], codec, scratch[c]))
                lo, hi = max(start, c * step), min(end, (c + 1) * step)
                copies.append((scratch[c][lo - c * step:hi - c * step], frames[slot][lo - start:hi - start]))

    def _fetch(self, path: str, index: np.ndarray, chunks: list[int]) -> dict[int, bytes]:
        """Encoded bytes of each chunk, reading runs of adjacent chunks with one range each."""
        runs: list[list[int]] = []
        for c in chunks:
            if runs and runs[-1][-1] == c - 1 and int(index[c - 1].sum()) == int(index[c, 0]):
                runs[-1].append(c)
            else:
                runs.append([c])
        ranges = [(int(index[r[0], 0]), int(index[r[-1], 0] + index[r[-1], 1])) for r in runs]
        blobs: dict[int, bytes] = {}
        for run, (base, _), raw in zip(runs, ranges, self.loc.read_ranges(path, ranges)):
            view = memoryview(raw)
            for c in run:
                offset = int(index[c, 0]) - base
                blobs[c] = view[offset:offset + int(index[c, 1])]  # type: ignore[assignment]
        return blobs


def _decode_group(decodes: list[Decode]) -> None:
    for raw, codec, target in decodes:
        if codec is None:
            target[...] = np.frombuffer(raw, dtype=target.dtype).reshape(target.shape)
        elif isinstance(codec, numcodecs.Blosc):
            blosc_decompress(raw, target)  # the codec object's decode adds checks costing ~10 us a chunk
        else:
            codec.decode(raw, out=target)
