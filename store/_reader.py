"""The read hot path: inner chunks located through the shard index, decoded with numcodecs, no zarr calls.

A cut's rows of one teacher lie in consecutive inner chunks of one shard
file. ``read`` groups every requested (cut, teacher) by file, finds the
chunks they need (each once, even when two cuts share it) and turns them
into *pieces*: one chunk's byte range and the array it decodes into
(straight into the output when the chunk belongs to one output only, else
into a scratch array copied out afterwards). Raw chunks (``codec="none"``)
stored back to back make a cut's rows one byte range: one piece per cut.

Local files are memory-mapped once (per process; the ``map_limit()`` most
recently used are kept) and pieces decode straight from the page cache: no
read call, no copy of the compressed bytes. Pieces
of big reads are split by bytes between the calling thread and a few helper
threads (blosc releases the GIL while decoding); small reads decode inline,
where a thread hand-off would cost more than it saves. fsspec files get
every range of a call in one ``cat_ranges`` request (concurrent on async
file systems), adjacent chunks merged up to ``MAX_RUN_BYTES``.

A chunk whose index entry is all 0xFF (``MISSING``) is absent, as Zarr's
sharding codec defines it: its rows read as the array's ``fill_value``.

Fork safety: nothing here uses zarr (so no event-loop thread is involved).
Memory maps and the thread pool belong to the process that made them; a
forked child (torch DataLoader workers) closes the maps it inherited and
rebuilds both on first use.
"""

from __future__ import annotations

import os
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numcodecs
import numpy as np
from numcodecs.abc import Codec
from numcodecs.blosc import decompress as blosc_decompress

from mt2kd.errors import StoreFormatError
from mt2kd.store._format import (
    CHUNK_FILE,
    DATA,
    METADATA_FILE,
    MISSING,
    ChecksumError,
    checked_payload,
    decode_index,
    has_checksums,
    index_nbytes,
    make_codec,
    num_chunks_of,
    parse_metadata,
)
from mt2kd.store._fs import LocalLocation, Location
from mt2kd.store._index import ShardRecord, commit_path
from mt2kd.store._spec import TeacherSpec

MAX_THREADS = 4  # threads (the caller's included) decoding one get / get_many
MIN_PARALLEL_BYTES = 256 * 1024  # compressed bytes per thread below which a hand-off costs more than it saves
MAX_FILES_PER_PASS = 128  # local files one decoding pass maps at once (a bigger call takes several)
MAX_RUN_BYTES = 4 * 1024 * 1024  # fsspec: adjacent chunks merged into one range request up to this size
ABSENT = -1  # chunk offset of an absent chunk, once the index is read as int64
BLOSC_HEADER_BYTES = 16  # blosc1 chunk header: version, flags, typesize, nbytes, blocksize, cbytes
BLOSC_CBYTES = slice(12, 16)  # little-endian uint32: bytes of the whole compressed chunk
Request = tuple[int, int, int]  # (output slot, first row, end row) within one file
Copy = tuple[np.ndarray, np.ndarray]  # (rows of a decoded chunk, where they go)


class Piece(NamedTuple):
    """One inner chunk to decode: where its bytes are and the array they fill."""

    path: str  # shard file, relative to the store root
    offset: int  # first byte of the chunk in the file
    nbytes: int  # encoded size of the chunk
    codec: Codec | None  # None: raw little-endian bytes
    target: np.ndarray  # [rows_per_chunk, dim], filled by decoding
    chunk: int = -1  # the chunk's number in its file, when the bytes end in its crc32c (checked first); -1: none


class ShardFile(NamedTuple):
    """What a reader keeps about one shard file: its chunk index and fill value."""

    entries: np.ndarray  # int64 [num_chunks, 2] (offset, nbytes); offset ABSENT for an absent chunk
    fill_value: float  # value of the rows of absent chunks (the array's zarr fill_value)
    row_bytes: int  # bytes of one row when every chunk is raw and chunk i starts at i x its size, else 0
    checksums: bool  # every chunk ends in its crc32c (format 2 and later)


class ChunkReader:
    """Reads row ranges of teacher data arrays, caching each file's chunk index."""

    def __init__(self, loc: Location, specs: Mapping[str, TeacherSpec], num_threads: int | None = None) -> None:
        self.loc, self.specs = loc, dict(specs)
        self.codecs: dict[str, Codec | None] = {
            t: make_codec(s.codec, s.codec_level, np.dtype(s.dtype).itemsize) for t, s in self.specs.items()}
        self._asked_threads = num_threads
        self.num_threads = num_threads or _default_threads()
        self._files: dict[str, ShardFile] = {}  # path -> index and fill value (16 bytes a chunk)
        self._pool: ThreadPoolExecutor | None = None
        self._pid = os.getpid()

    # ------------------------------------------------------------ per-file facts

    def shard_file(self, record: ShardRecord, teacher: str) -> ShardFile:
        """The chunk index and fill value of a teacher's data file in ``record`` (read once, cached)."""
        path = f"{record.path}/{teacher}/{DATA}/{CHUNK_FILE}"
        found = self._files.get(path)
        if found is None:
            rows = record.teachers[teacher]
            fill_value, checksums = self._array_facts(record, teacher)
            num_chunks = num_chunks_of(rows.num_rows, rows.rows_per_chunk)
            data_end = rows.nbytes - index_nbytes(num_chunks)
            tail = self.loc.read_ranges(path, [(data_end, rows.nbytes)])[0]
            index = _checked_index(decode_index(tail, num_chunks, f"{self.loc.url}/{path}"), data_end,
                                   f"{self.loc.url}/{path}")
            row_bytes = self.specs[teacher].dim * np.dtype(self.specs[teacher].dtype).itemsize
            flat = (self.codecs[teacher] is None and not checksums
                    and _chunks_back_to_back(index, rows.rows_per_chunk * row_bytes))
            found = self._files[path] = ShardFile(index, fill_value, row_bytes if flat else 0, checksums)
        return found

    def _array_facts(self, record: ShardRecord, teacher: str) -> tuple[float, bool]:
        """The data array's fill value, and whether its chunks end in a crc32c (from its ``zarr.json``)."""
        path = f"{record.path}/{teacher}/{DATA}/{METADATA_FILE}"
        doc = parse_metadata(self.loc.read(path), f"{self.loc.url}/{path}")
        if doc.get("data_type") != self.specs[teacher].dtype:
            raise StoreFormatError(f"{self.loc.url}/{path}: data_type must be {self.specs[teacher].dtype!r} "
                                   f"as the spec says. Got {doc.get('data_type')!r}.")
        fill = doc.get("fill_value", 0)
        try:
            return float(fill), has_checksums(doc)  # zarr v3 writes "NaN" / "Infinity" as strings: float() reads them
        except (TypeError, ValueError) as e:
            raise StoreFormatError(f"{self.loc.url}/{path}: fill_value must be a number. Got {fill!r}.") from e

    # ------------------------------------------------------------ reading

    def read(self, jobs: Sequence[tuple[ShardRecord, int]], teachers: Sequence[str]
             ) -> list[dict[str, np.ndarray]]:
        """``{teacher: array}`` for every (record, position) in ``jobs``, in order."""
        outputs: list[dict[str, np.ndarray]] = [{} for _ in jobs]
        by_file: dict[tuple[str, str], list[Request]] = defaultdict(list)
        records: dict[str, ShardRecord] = {}
        for slot, (record, position) in enumerate(jobs):
            records[record.name] = record
            if record.problems:
                raise StoreFormatError(f"cut {record.cut_ids[position]!r} cannot be read: the commit record of its "
                                       f"shard, {self.loc.url}/{commit_path(record.name)}, is malformed: "
                                       f"{'; '.join(record.problems)}.")
            for teacher in teachers:
                rows = record.teachers.get(teacher)
                if rows is None:
                    continue
                start, end = int(rows.offsets[position]), int(rows.offsets[position + 1])
                if end > start:
                    by_file[(record.name, teacher)].append((slot, start, end))
        pieces: list[Piece] = []
        copies: list[Copy] = []
        for (name, teacher), requests in by_file.items():
            self._plan_file(records[name], teacher, requests, outputs, pieces, copies)
        if pieces:
            try:
                self._decode_all(pieces)
            except ChecksumError as e:
                raise self._named(e, jobs, by_file, records) from None
        for source, target in copies:
            target[...] = source
        return outputs

    def _named(self, error: ChecksumError, jobs: Sequence[tuple[ShardRecord, int]],
               by_file: Mapping[tuple[str, str], list[Request]], records: Mapping[str, ShardRecord]) -> ChecksumError:
        """``error`` again, naming the cuts whose rows the corrupt chunk holds (of those asked for)."""
        for (name, teacher), requests in by_file.items():
            record = records[name]
            if f"{record.path}/{teacher}/{DATA}/{CHUNK_FILE}" != error.path:
                continue
            step = record.teachers[teacher].rows_per_chunk
            lo, hi = error.chunk * step, (error.chunk + 1) * step
            cut_ids = tuple(dict.fromkeys(jobs[slot][0].cut_ids[jobs[slot][1]] for slot, start, end in requests
                                          if start < hi and end > lo))
            return ChecksumError(f"cut {', '.join(map(repr, cut_ids))} (teacher {teacher!r}, shard {name}) cannot "
                                 f"be read: {self.loc.url}/{error}", error.path, error.chunk, cut_ids)
        return error

    def _plan_file(self, record: ShardRecord, teacher: str, requests: list[Request],
                   outputs: list[dict[str, np.ndarray]], pieces: list[Piece], copies: list[Copy]) -> None:
        """Allocate the outputs of ``requests`` and plan the pieces and copies that fill them."""
        spec = self.specs[teacher]
        step = record.teachers[teacher].rows_per_chunk
        dtype = np.dtype(spec.dtype)
        found = self.shard_file(record, teacher)
        path = f"{record.path}/{teacher}/{DATA}/{CHUNK_FILE}"
        if found.row_bytes:  # raw chunks back to back: each output is one byte range of the file
            for slot, start, end in requests:
                out = np.empty((end - start, spec.dim), dtype=dtype)
                outputs[slot][teacher] = _output_view(out, spec)
                pieces.append(Piece(path, start * found.row_bytes, (end - start) * found.row_bytes, None, out))
            return
        codec, entries = self.codecs[teacher], found.entries
        scratch: dict[int, np.ndarray] = {}  # partial chunks (at most two per request), decoded once
        for slot, start, end in sorted(requests, key=lambda r: r[1]):  # disjoint row ranges, in file order
            out = np.empty((end - start, spec.dim), dtype=dtype)
            outputs[slot][teacher] = _output_view(out, spec)
            first = start // step
            for c, (offset, nbytes) in enumerate(entries[first:(end - 1) // step + 1].tolist(), start=first):
                lo, hi = c * step, (c + 1) * step
                if lo >= start and hi <= end:  # the chunk belongs to this output only: decode in place
                    target = out[lo - start:hi - start]
                else:  # decode once into a scratch chunk, copy this output's rows out afterwards
                    planned = c in scratch
                    target = scratch[c] if planned else scratch.setdefault(c, np.empty((step, spec.dim), dtype))
                    low, high = max(start, lo), min(end, hi)
                    copies.append((target[low - lo:high - lo], out[low - start:high - start]))
                    if planned:  # shared with the previous request
                        continue
                if offset == ABSENT:
                    target.fill(found.fill_value)
                else:
                    pieces.append(Piece(path, offset, nbytes, codec, target, c if found.checksums else -1))

    def _decode_all(self, pieces: list[Piece]) -> None:
        if self._pid != os.getpid():  # forked: maybe a DataLoader worker, sharing the cores with its siblings
            self.num_threads = self._asked_threads or _default_threads()
        if not isinstance(self.loc, LocalLocation):
            self._decode_remote(pieces)
            return
        if len(pieces) <= MAX_FILES_PER_PASS or len({p.path for p in pieces}) <= MAX_FILES_PER_PASS:
            self._decode_local(self.loc, pieces)
            return
        # more files than the map cache keeps: decode them in passes, so that the call never holds more maps
        # (each a file descriptor) than that; a file's pieces are consecutive
        start, files = 0, set[str]()
        for end, piece in enumerate(pieces):
            if piece.path not in files and len(files) == MAX_FILES_PER_PASS:
                self._decode_local(self.loc, pieces[start:end])
                start, files = end, set()
            files.add(piece.path)
        self._decode_local(self.loc, pieces[start:])

    def _decode_local(self, loc: LocalLocation, pieces: list[Piece]) -> None:
        views = {p.path: loc.map(p.path) for p in pieces}  # mapped here: helpers never touch the cache
        total = sum(p.nbytes for p in pieces)
        to_decode = sum(p.nbytes for p in pieces if p.codec is not None)  # raw copies are memory-bound: no split
        num_groups = max(1, min(self.num_threads, to_decode // MIN_PARALLEL_BYTES, len(pieces)))
        if num_groups == 1:
            _decode_mapped(pieces, views)
            return
        groups = _split_by_bytes(pieces, num_groups, total)
        pool = self._executor()
        helpers = [pool.submit(_decode_mapped, group, views) for group in groups[1:]]
        try:
            _decode_mapped(groups[0], views)  # the caller works too rather than waiting idle
        finally:
            for future in helpers:
                future.result()

    def _decode_remote(self, pieces: list[Piece]) -> None:
        """Object stores: every range of the call in one ``cat_ranges`` request, adjacent chunks merged."""
        runs: list[list[Piece]] = []
        for piece in sorted(pieces, key=lambda p: (p.path, p.offset)):
            last = runs[-1][-1] if runs else None
            if (last is None or last.path != piece.path or last.offset + last.nbytes != piece.offset
                    or piece.offset + piece.nbytes - runs[-1][0].offset > MAX_RUN_BYTES):
                runs.append([piece])
            else:
                runs[-1].append(piece)
        ranges = [(run[0].path, run[0].offset, run[-1].offset + run[-1].nbytes) for run in runs]
        for run, raw in zip(runs, self.loc.read_path_ranges(ranges)):
            view = memoryview(raw)
            for piece in run:
                start = piece.offset - run[0].offset
                _decode(view[start:start + piece.nbytes], piece)

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None or self._pid != os.getpid():  # threads do not survive fork
            self._pool = ThreadPoolExecutor(max_workers=max(1, self.num_threads - 1),
                                            thread_name_prefix="mt2kd-read")
            self._pid = os.getpid()
        return self._pool


def _output_view(rows: np.ndarray, spec: TeacherSpec) -> np.ndarray:
    """What ``get`` returns of a cut's rows (filled later): frames as they are, a clip vector, a text's bytes.

    A text's rows are its UTF-8 bytes and a closing 0 byte (``_writer``), left out here.
    """
    if spec.kind == "frames":
        return rows
    return rows[:-1, 0] if spec.kind == "text" else rows[0]


def _checked_index(table: np.ndarray, data_end: int, where: str) -> np.ndarray:
    """The index as int64 with absent chunks marked; entries pointing outside the data are refused."""
    missing = table == np.uint64(MISSING)
    half = missing[:, 0] != missing[:, 1]
    if half.any():
        raise StoreFormatError(f"{where}: a shard index entry must be a valid (offset, nbytes) pair or all 0xFF "
                               f"(absent chunk). Got a half-absent entry for chunk {int(np.argmax(half))}.")
    index = table.astype(np.int64)  # all-0xFF pairs wrap to -1 (ABSENT)
    present = ~missing[:, 0]
    ends = table[present, 0] + table[present, 1]
    if ends.size and int(ends.max()) > data_end:
        raise StoreFormatError(f"{where}: every chunk must end before the shard index at byte {data_end}. "
                               f"Got a chunk ending at byte {int(ends.max())} (file corrupt).")
    return index


def _chunks_back_to_back(index: np.ndarray, chunk_bytes: int) -> bool:
    """Whether chunk i is stored whole at byte i x chunk_bytes, for every i (what mt2kd writes raw)."""
    expected = np.arange(index.shape[0], dtype=np.int64) * chunk_bytes
    return bool(np.array_equal(index[:, 0], expected) and np.all(index[:, 1] == chunk_bytes))


def _split_by_bytes(pieces: list[Piece], num_groups: int, total: int) -> list[list[Piece]]:
    """``pieces`` cut into ``num_groups`` consecutive groups of about equal encoded bytes."""
    groups: list[list[Piece]] = [[] for _ in range(num_groups)]
    done = 0
    for piece in pieces:
        groups[min(num_groups - 1, done * num_groups // total)].append(piece)
        done += piece.nbytes
    return [g for g in groups if g]


def _default_threads() -> int:
    """Up to MAX_THREADS, sharing the cores with sibling torch DataLoader workers when in one."""
    num_cpus = os.cpu_count() or 1
    data = sys.modules.get("torch.utils.data")  # only if torch is already in use: never import it here
    info = data.get_worker_info() if data is not None else None
    if info is not None:
        num_cpus = max(1, num_cpus // max(1, int(info.num_workers)))
    return max(1, min(MAX_THREADS, num_cpus))


def _decode_mapped(pieces: list[Piece], views: Mapping[str, memoryview]) -> None:
    for piece in pieces:
        _decode(views[piece.path][piece.offset:piece.offset + piece.nbytes], piece)


def _decode(blob: Any, piece: Piece) -> None:
    codec, target = piece.codec, piece.target
    if piece.chunk >= 0:
        blob = checked_payload(blob, piece.path, piece.chunk, piece.offset)
    if codec is None:
        target[...] = np.frombuffer(blob, dtype=target.dtype).reshape(target.shape)
    elif isinstance(codec, numcodecs.Blosc):
        # blosc trusts the stored size in the chunk's header and would read past the chunk
        # (past the file, at its end) if it were corrupt: check it against the shard index
        stored = int.from_bytes(blob[BLOSC_CBYTES], "little") if len(blob) >= BLOSC_HEADER_BYTES else -1
        if stored != len(blob):
            raise StoreFormatError(f"{piece.path}: the blosc chunk at byte {piece.offset} must be {len(blob)} "
                                   f"bytes as the shard index says. Got a header saying {stored} (corrupt file).")
        blosc_decompress(blob, target)  # the codec object's decode adds checks costing ~10 us a chunk
    else:
        codec.decode(blob, out=target)
