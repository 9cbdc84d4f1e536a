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
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numcodecs.abc import Codec

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

MAX_THREADS = 4  # files read in parallel by one get_many
Request = tuple[int, int, int]  # (output slot, first row, end row) within one file


class ChunkReader:
    """Reads row ranges of teacher data arrays, caching each file's chunk index."""

    def __init__(self, loc: Location, specs: Mapping[str, TeacherSpec]) -> None:
        self.loc, self.specs = loc, dict(specs)
        self.codecs: dict[str, Codec | None] = {
            t: make_codec(s.codec, s.codec_level, np.dtype(s.dtype).itemsize) for t, s in self.specs.items()}
        self._indexes: dict[str, np.ndarray] = {}
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
        work = [(records[name], teacher, reqs) for (name, teacher), reqs in by_file.items()]
        if len(work) > 1 and sum(len(w[2]) for w in work) > 2:
            list(self._executor().map(lambda w: self._read_file(*w, outputs), work))
        else:
            for record, teacher, reqs in work:
                self._read_file(record, teacher, reqs, outputs)
        return outputs

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None or self._pid != os.getpid():  # threads do not survive fork
            self._pool = ThreadPoolExecutor(max_workers=min(MAX_THREADS, os.cpu_count() or 1),
                                            thread_name_prefix="mt2kd-read")
            self._pid = os.getpid()
        return self._pool

    def _read_file(self, record: ShardRecord, teacher: str, requests: list[Request],
                   outputs: list[dict[str, np.ndarray]]) -> None:
        spec = self.specs[teacher]
        step = record.teachers[teacher].rows_per_chunk
        index = self._chunk_index(record, teacher)
        dtype = np.dtype(spec.dtype)
        for slot, start, end in requests:
            out = np.empty((end - start, spec.dim), dtype=dtype)
            outputs[slot][teacher] = out if spec.kind == "frames" else out[0]
        needed = sorted({c for _, start, end in requests for c in range(start // step, (end - 1) // step + 1)})
        blobs = self._fetch(f"{record.path}/{teacher}/{DATA}/{CHUNK_FILE}", index, needed)
        whole = {}  # chunk -> (slot, row in output) when the chunk lies inside one output only
        shared = set()
        for slot, start, end in requests:
            for c in range(start // step, (end - 1) // step + 1):
                if c * step >= start and (c + 1) * step <= end and c not in whole:
                    whole[c] = (slot, c * step - start)
                else:
                    shared.add(c)
        codec = self.codecs[teacher]
        decoded: dict[int, np.ndarray] = {}
        for c in needed:
            if c in whole and c not in shared:
                slot, row = whole[c]
                target = _frames(outputs[slot][teacher], spec.dim)[row:row + step]
                _decode_into(blobs[c], codec, target)
            else:
                decoded[c] = _decode(blobs[c], codec, dtype, (step, spec.dim))
        for slot, start, end in requests:
            out = _frames(outputs[slot][teacher], spec.dim)
            for c in range(start // step, (end - 1) // step + 1):
                if c in decoded:
                    lo, hi = max(start, c * step), min(end, (c + 1) * step)
                    out[lo - start:hi - start] = decoded[c][lo - c * step:hi - c * step]

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


def _frames(array: np.ndarray, dim: int) -> np.ndarray:
    return array.reshape(-1, dim)


def _decode(raw: bytes, codec: Codec | None, dtype: np.dtype, shape: tuple[int, int]) -> np.ndarray:
    data = raw if codec is None else codec.decode(raw)
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _decode_into(raw: bytes, codec: Codec | None, target: np.ndarray) -> None:
    if codec is None:
        target[...] = np.frombuffer(raw, dtype=target.dtype).reshape(target.shape)
    else:
        codec.decode(raw, out=target)
