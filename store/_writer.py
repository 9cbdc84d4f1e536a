"""Writing one shard: validate, stream chunks to the shard files, commit atomically.

A writer works under ``shards/<shard>.<attempt>/`` (a fresh attempt token
each time) while holding ``locks/<shard>.lock``. Nothing there is part of the
store until the commit record ``commits/<shard>/zarr.json`` is created,
which is the last write and is atomic (``link`` of a complete temp file on
local folders). A writer that dies leaves an attempt folder no reader looks
at and a lock whose process is gone; the next writer of that shard removes
both. A writer rewrites its lock every ``LOCK_BEAT_SECONDS`` (a heartbeat),
so that a writer on any host can tell a lock whose holder died (with its
node, or in a restarted container) from a live one (``holder_alive``).
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import IO, Any

import numpy as np

import mt2kd.store._fs as _fs
from mt2kd.errors import DuplicateCutError, ShardCommittedError, ShardLockedError, StoreError, ValidationError
from mt2kd.store._format import (
    CHUNK_FILE,
    CHUNK_FILE_1D,
    COMMIT_KEY,
    CUT_ID_BYTES,
    CUT_ID_OFFSETS,
    DATA,
    LOCKS_DIR,
    METADATA_FILE,
    OFFSETS,
    ROOT_KEY,
    SHARD_KEY,
    SHARDS_DIR,
    array_metadata,
    chunk_rows,
    encode_chunk,
    encode_index,
    group_metadata,
    make_codec,
)
from mt2kd.store._fs import Location
from mt2kd.store._index import ShardRecord, StoreIndex, TeacherRows, commit_path, read_record, record_is_torn
from mt2kd.store._spec import TEXT_END, TeacherSpec

SMALL_CODEC = "zstd"  # offsets and cut ID bytes
SMALL_CODEC_LEVEL = 3


class _TeacherFile:
    """The one shard file of a teacher's data array, written chunk by chunk."""

    def __init__(self, loc: Location, path: str, spec: TeacherSpec) -> None:
        self.loc, self.path, self.spec = loc, path, spec
        self.rows_per_chunk = chunk_rows(spec)
        self.codec = make_codec(spec.codec, spec.codec_level, np.dtype(spec.dtype).itemsize)
        self.pending = np.zeros((self.rows_per_chunk, spec.dim), dtype=spec.dtype)
        self.num_pending = 0
        self.entries: list[tuple[int, int]] = []
        self.position = 0  # bytes written so far
        self.num_rows = 0
        self.handle: IO[bytes] | None = None

    def add(self, rows: np.ndarray) -> None:
        start = 0
        while start < rows.shape[0]:
            take = min(self.rows_per_chunk - self.num_pending, rows.shape[0] - start)
            self.pending[self.num_pending:self.num_pending + take] = rows[start:start + take]
            self.num_pending += take
            start += take
            if self.num_pending == self.rows_per_chunk:
                self._flush()
        self.num_rows += rows.shape[0]

    def _flush(self) -> None:
        self.pending[self.num_pending:] = 0  # the edge chunk is stored whole, padded with the fill value
        blob = encode_chunk(self.pending, self.codec)
        with self._writing(f"chunk {len(self.entries)} of the data of teacher {self.spec.name!r}"):
            if self.handle is None:
                self.handle = self.loc.open_write(self.path)
            self.handle.write(blob)
        self.entries.append((self.position, len(blob)))
        self.position += len(blob)
        self.num_pending = 0

    def finish(self) -> int:
        """Write the last chunk and the index; the file's size in bytes (0: no rows, no file)."""
        if self.num_pending and not self.entries:
            # everything fits in one chunk: make the chunk exactly that big (no padding on disk)
            self.rows_per_chunk = self.num_pending
            self.pending = self.pending[:self.num_pending]
        if self.num_pending:
            self._flush()
        if self.handle is None:
            return 0
        tail = encode_index(self.entries)
        with self._writing(f"the chunk index of the data of teacher {self.spec.name!r}"):
            self.handle.write(tail)
            self.handle.close()  # a buffered write refused for room may only fail here
        self.handle = None
        return self.position + len(tail)

    def _writing(self, what: str) -> Any:
        return _fs.writing(self.loc.url, self.path, what, lambda: self.position)

    def close(self) -> None:
        handle, self.handle = self.handle, None
        if handle is not None:
            handle.close()


class ShardWriter:
    """Collects one shard's cuts and commits them when its ``with`` block ends cleanly.

    Get one from :meth:`TeacherStore.shard_writer`; do not build it directly.

    Examples
    --------
    >>> with store.shard_writer(0) as writer:  # doctest: +SKIP
    ...     writer.put("cut-1", {"whisper": frames, "beats": logits})
    ...     writer.record_failure("cut-2", "audio file could not be decoded")
    """

    def __init__(self, loc: Location, specs: Mapping[str, TeacherSpec], name: str, replace: bool,
                 load_index: Callable[[], StoreIndex], on_commit: Callable[[ShardRecord], None],
                 owner: str = "", token: str = "") -> None:
        self.loc, self.specs, self.name, self.replace, self.owner = loc, dict(specs), name, replace, owner
        self.token = token  # the store's token: its commit records carry it, and each commit checks it is still it
        self._load_index, self._on_commit = load_index, on_commit
        self.attempt = uuid.uuid4().hex[:12]
        self.cut_ids: list[str] = []
        self._positions: dict[str, int] = {}
        self._offsets = {t: [0] for t in self.specs}
        self._files: dict[str, _TeacherFile] = {}
        self._failures: list[dict[str, Any]] = []
        self._lock_path = f"{LOCKS_DIR}/{name}.lock"
        self._locked = False
        self._beat_stop = threading.Event()
        self._beat_thread: threading.Thread | None = None
        self._done = False

    @property
    def path(self) -> str:
        return f"{SHARDS_DIR}/{self.name}.{self.attempt}"

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> ShardWriter:
        self._refuse_if_committed()
        self._acquire_lock()
        try:
            self._refuse_if_committed()
            self._remove_abandoned_attempts()
        except BaseException:
            self._release_lock()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if exc_type is None:
                self._commit()
        finally:
            try:
                if not self._done:
                    self._discard()
            finally:  # a discard that fails (the file system went away) must not keep the lock or its heartbeat
                self._release_lock()

    def _refuse_if_committed(self) -> None:
        # a torn record (a writer killed between creating and writing it) is no commit: the shard is written again
        if not self.replace and read_record(self.loc, self.name, self.token) is not None:
            raise ShardCommittedError(f"shard {self.name} of {self.loc.url} must not be committed yet "
                                      f"(pass replace=True to rewrite it). Got an existing commit record.")

    def _acquire_lock(self) -> None:
        """Create the lock; take over a dead writer's; wait for a live one of the same owner, refuse others.

        A lock of the same ``owner`` is an earlier attempt of this very task
        (dask reruns a task whose worker it lost, possibly on another node):
        this writer waits until that attempt commits (then the shard is
        committed and this one stops) or is found dead.
        """
        while not self.loc.create(self._lock_path, self._lock_document()):
            holder = self._lock_holder()
            if not _fs.holder_alive(holder):
                self.loc.remove(self._lock_path)  # its writer died (killed, or its node lost): take over
                if self.loc.create(self._lock_path, self._lock_document()):
                    break
                raise ShardLockedError(f"shard {self.name} of {self.loc.url} was taken by another writer just now.")
            if not self.owner or holder.get("owner") != self.owner:
                raise ShardLockedError(
                    f"shard {self.name} of {self.loc.url} must have one writer at a time. Got a second one; the "
                    f"first is pid {holder.get('pid')} on {holder.get('host')} (a lock on any host is taken "
                    f"over once it has gone {_fs.LOCK_STALE_SECONDS:g} s without a heartbeat).")
            time.sleep(min(_fs.LOCK_BEAT_SECONDS, 5.0))
        self._locked = True
        self._beat_thread = threading.Thread(target=self._beat, name=f"mt2kd-lock-{self.name}", daemon=True)
        self._beat_thread.start()

    def _lock_document(self) -> bytes:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "attempt": self.attempt,
                           "owner": self.owner, "beat": time.time()}).encode()

    def _lock_holder(self) -> dict[str, Any]:
        try:
            holder = json.loads(self.loc.read(self._lock_path))
            return holder if isinstance(holder, dict) else {}
        except (FileNotFoundError, ValueError):
            return {"host": socket.gethostname(), "pid": os.getpid()}  # being written right now: alive

    def _holds_lock(self) -> bool:
        return self._lock_holder().get("attempt") == self.attempt

    def _beat(self) -> None:
        """Rewrite the lock with the time while it is ours, so writers on other hosts see this one alive."""
        while not self._beat_stop.wait(_fs.LOCK_BEAT_SECONDS):
            try:
                if not self._holds_lock():
                    return  # taken over (this writer was late by LOCK_STALE_SECONDS): the commit will refuse
                self.loc.write(self._lock_path, self._lock_document())
            except Exception:  # noqa: BLE001 - a file system or network hiccup (fsspec backends raise their own
                continue  # types): the next beat tries again; a beat thread that died would let the lock go stale

    def _release_lock(self) -> None:
        if self._locked:
            self._locked = False
            self._beat_stop.set()
            if self._beat_thread is not None:
                self._beat_thread.join()
            if self._holds_lock():
                self.loc.remove(self._lock_path)

    def _remove_abandoned_attempts(self) -> None:
        """Attempt folders of this shard left by dead writers (we hold the lock, so none is live)."""
        record = read_record(self.loc, self.name, self.token)
        live = None if record is None else f"{self.name}.{record.attempt}"
        for entry in self.loc.listdir(SHARDS_DIR):
            if entry.startswith(f"{self.name}.") and entry != live:
                self.loc.remove(f"{SHARDS_DIR}/{entry}")

    def _discard(self) -> None:
        self._done = True
        for f in self._files.values():
            try:
                f.close()
            except OSError:  # a full disk fails the close's flush too; the attempt folder goes anyway
                continue
        self.loc.remove(self.path)

    # ------------------------------------------------------------ writing

    def put(self, cut_id: str, outputs: Mapping[str, Any]) -> None:
        """Add one cut's teacher outputs (frames ``[T, dim]``, clip ``[dim]``, text a str); some may be absent.

        Raises ValidationError naming the cut and teacher when a shape, dtype or
        value is wrong (non-finite values included, after the cast to the
        store's dtype); its ``teacher`` attribute is the teacher whose array it
        refused (None when the cut itself is refused). Raises DuplicateCutError
        when the cut is already in the shard.
        """
        self._check_open()
        _check_cut_id(cut_id)
        if cut_id in self._positions:
            raise DuplicateCutError(f"cut IDs must be unique within a store. Got {cut_id!r} put twice in shard "
                                    f"{self.name} (positions {self._positions[cut_id]} and {len(self.cut_ids)}).")
        if not isinstance(outputs, Mapping) or not outputs:
            raise ValidationError(f"put({cut_id!r}) needs a non-empty {{teacher: array}} mapping; use "
                                  f"record_failure for a cut without outputs. Got {outputs!r}.")
        arrays = {t: self._validated(cut_id, t, a) for t, a in outputs.items()}
        for name, offsets in self._offsets.items():
            array = arrays.get(name)
            if array is not None:
                self._file(name).add(array.reshape(-1, self.specs[name].dim))
            offsets.append(offsets[-1] + (0 if array is None else array.reshape(-1, self.specs[name].dim).shape[0]))
        self._positions[cut_id] = len(self.cut_ids)
        self.cut_ids.append(cut_id)

    def record_failure(self, cut_id: str, reason: str, teacher: str | None = None) -> None:
        """Record that ``cut_id`` (or only ``teacher``'s output of it) could not be produced, and why."""
        self._check_open()
        _check_cut_id(cut_id)
        if teacher is not None and teacher not in self.specs:
            raise ValidationError(f"failure of cut {cut_id!r}: teacher must be one of {list(self.specs)} or None. "
                                  f"Got {teacher!r}.")
        self._failures.append({"cut_id": cut_id, "teacher": teacher, "reason": str(reason)})

    def _check_open(self) -> None:
        if self._done or not self._locked:
            raise ValidationError(f"shard {self.name}: put and record_failure work inside the writer's `with` "
                                  "block only. Got a call outside it.")

    def _file(self, teacher: str) -> _TeacherFile:
        if teacher not in self._files:
            self._files[teacher] = _TeacherFile(self.loc, f"{self.path}/{teacher}/{DATA}/{CHUNK_FILE}",
                                                self.specs[teacher])
        return self._files[teacher]

    def _validated(self, cut_id: str, teacher: str, value: Any) -> np.ndarray:
        spec = self.specs.get(teacher)
        if spec is None:
            raise ValidationError(f"cut {cut_id!r}: teacher must be one of {list(self.specs)}. Got {teacher!r}.",
                                  teacher=teacher)
        if spec.kind == "text":
            return _text_rows(cut_id, teacher, value)
        array = np.asarray(value)
        if array.dtype.kind not in "fiu":
            raise ValidationError(f"cut {cut_id!r}, teacher {teacher!r}: output must be a real-number array. "
                                  f"Got dtype {array.dtype}.", teacher=teacher)
        expected = f"[num_frames >= 1, {spec.dim}]" if spec.kind == "frames" else f"[{spec.dim}]"
        ok = (array.ndim == 2 and array.shape[0] >= 1 and array.shape[1] == spec.dim) if spec.kind == "frames" \
            else array.shape == (spec.dim,)
        if not ok:
            raise ValidationError(f"cut {cut_id!r}, teacher {teacher!r}: {spec.kind} output must have shape "
                                  f"{expected}. Got {list(array.shape)}.", teacher=teacher)
        if np.dtype(spec.dtype).kind == "u":
            _check_codes(cut_id, teacher, array, spec.dtype)
        with np.errstate(over="ignore"):
            stored = array.astype(spec.dtype, copy=False)
        num_bad = int(stored.size - np.count_nonzero(np.isfinite(stored)))
        if num_bad:
            raise ValidationError(f"cut {cut_id!r}, teacher {teacher!r}: values must be finite in {spec.dtype}. "
                                  f"Got {num_bad} NaN/Inf values (or values beyond the {spec.dtype} range).",
                                  teacher=teacher)
        return stored

    # ------------------------------------------------------------ commit

    def _commit(self) -> None:
        if not self._holds_lock():
            raise ShardLockedError(f"shard {self.name} of {self.loc.url} was taken over by another writer while "
                                   f"this one wrote it (its heartbeat was {_fs.LOCK_STALE_SECONDS:g} s late); "
                                   f"not committed.")
        self._check_same_store()
        index = self._load_index()
        index.check_new(self.cut_ids, self.name)
        teachers = {t: self._write_teacher(t) for t in self.specs}
        self._write_cut_ids()
        record = ShardRecord(self.name, self.attempt, list(self.cut_ids), teachers, list(self._failures),
                             datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                             {"host": socket.gethostname(), "pid": os.getpid()}, self.token)
        summary = {k: v for k, v in record.to_dict().items() if k not in ("cut_ids", "teachers")}
        self._put(f"{self.path}/{METADATA_FILE}", group_metadata({SHARD_KEY: summary}), "the shard group's metadata")
        with _fs.writing(self.loc.url, self.path, "the shard's files to disk (fsync)"):
            self.loc.sync_tree(self.path)  # every file and name of the attempt on disk before the record names it
        self._check_same_store()  # again, last thing before the record: the data writes took a while
        with _fs.writing(self.loc.url, commit_path(self.name), "the commit record"):
            self._publish(record)

    def _put(self, path: str, data: bytes, what: str) -> None:
        with _fs.writing(self.loc.url, path, what):
            self.loc.put(path, data)

    def _check_same_store(self) -> None:
        """Refuse to commit into a store made anew at this place since this writer's store was opened.

        ``--overwrite`` refuses a store with live writers, but a writer whose
        process opened the old store and starts a shard after the new one was
        made has no lock to be seen by: its store token tells.
        """
        try:
            root = json.loads(self.loc.read(METADATA_FILE)).get("attributes", {}).get(ROOT_KEY, {})
            now = str(root.get("token") or "")
        except FileNotFoundError:
            now = "(no store)"
        except (ValueError, AttributeError):
            now = "(an unreadable root document)"
        if now != self.token:
            raise StoreError(f"shard {self.name} of {self.loc.url} must be committed into the store its writer "
                             f"opened (token {self.token or '(none)'}). Got a store made anew there meanwhile "
                             f"(token {now}; --overwrite while this job ran?); not committed.")

    def _publish(self, record: ShardRecord) -> None:
        """Write the commit record; from then on the shard is committed, whatever fails after."""
        document = group_metadata({COMMIT_KEY: record.to_dict()})
        old = read_record(self.loc, self.name, self.token) if self.replace else None
        try:
            if self.replace:
                self.loc.write(commit_path(self.name), document, durable=True)
                published = True
            else:
                published = self.loc.create(commit_path(self.name), document, durable=True)
                if not published and record_is_torn(self.loc, self.name, self.token):
                    # a writer of this shard killed while writing its record left it torn, or a writer of the
                    # store this one replaced committed late (another token): not a commit; we hold the lock
                    self.loc.write(commit_path(self.name), document, durable=True)
                    published = True
        except Exception:
            if not self._record_is_ours():  # a write whose reply was lost may still have landed
                raise
            published = True
        # a retried create (NFS, an object store's retry after a lost reply) reports "exists" for our own record
        if not published and not self._record_is_ours():
            raise ShardCommittedError(f"shard {self.name} of {self.loc.url} must be committed once. "
                                      "Got a commit record written by another writer meanwhile.")
        self._done = True
        self._on_commit(record)
        if old is not None and old.attempt != self.attempt:
            try:
                self.loc.remove(old.path)
            except Exception:  # noqa: BLE001 - best effort: the old attempt is then a leftover that clean removes
                pass

    def _record_is_ours(self) -> bool:
        """Whether the shard's commit record names this writer's attempt (False when it cannot be read)."""
        try:
            record = read_record(self.loc, self.name)
        except Exception:  # noqa: BLE001 - unreadable now: not known to be ours, so not committed
            return False
        return record is not None and record.attempt == self.attempt

    def _write_teacher(self, teacher: str) -> TeacherRows:
        spec = self.specs[teacher]
        file = self._file(teacher)
        nbytes = file.finish()
        base = f"{self.path}/{teacher}"
        self._put(f"{base}/{DATA}/{METADATA_FILE}", array_metadata(
            (file.num_rows, spec.dim), spec.dtype, file.rows_per_chunk, spec.codec, spec.codec_level),
            f"teacher {teacher!r}'s array metadata")
        offsets = np.asarray(self._offsets[teacher], dtype=np.int64)
        _write_small_array(self._put, f"{base}/{OFFSETS}", offsets, f"teacher {teacher!r}'s offsets")
        self._put(f"{base}/{METADATA_FILE}", group_metadata({"teacher": spec.to_dict()}),
                  f"teacher {teacher!r}'s group metadata")
        return TeacherRows(offsets, file.rows_per_chunk, file.num_rows, nbytes)

    def _write_cut_ids(self) -> None:
        encoded = [c.encode("utf-8") for c in self.cut_ids]
        offsets = np.cumsum([0] + [len(e) for e in encoded], dtype=np.int64)
        _write_small_array(self._put, f"{self.path}/{CUT_ID_BYTES}", np.frombuffer(b"".join(encoded), np.uint8),
                           "the cut IDs")
        _write_small_array(self._put, f"{self.path}/{CUT_ID_OFFSETS}", offsets, "the cut ID offsets")


def refuse_live_writers(loc: Location) -> None:
    """Raise ShardLockedError naming the first live writer holding a shard lock of the store at ``loc``."""
    for entry in loc.listdir(LOCKS_DIR):
        if not entry.endswith(".lock"):
            continue
        try:
            holder = json.loads(loc.read(f"{LOCKS_DIR}/{entry}"))
        except (FileNotFoundError, ValueError):
            continue  # released just now, or being written: a writer starting that will fail to commit
        if isinstance(holder, dict) and _fs.holder_alive(holder):
            raise ShardLockedError(
                f"{loc.url} must have no live writer to be deleted and made anew. Got pid {holder.get('pid')} on "
                f"{holder.get('host')} writing shard {entry[:-len('.lock')]}; stop that job first (a lock of "
                f"another host counts as live until it has gone {_fs.LOCK_STALE_SECONDS:g} s without a heartbeat).")


def _write_small_array(put: Callable[[str, bytes, str], None], path: str, array: np.ndarray, what: str) -> None:
    """A 1-D array as one shard holding one chunk (zstd), written with ``put(path, bytes, what)``."""
    rows = max(1, array.shape[0])
    if array.shape[0]:
        codec = make_codec(SMALL_CODEC, SMALL_CODEC_LEVEL, array.dtype.itemsize)
        blob = encode_chunk(array, codec)
        put(f"{path}/{CHUNK_FILE_1D}", blob + encode_index([(0, len(blob))]), what)
    put(f"{path}/{METADATA_FILE}", array_metadata(array.shape, str(array.dtype), rows, SMALL_CODEC,
                                                  SMALL_CODEC_LEVEL), f"{what} metadata")


def _text_rows(cut_id: str, teacher: str, value: Any) -> np.ndarray:
    """A text output as stored: its UTF-8 bytes and a closing 0 byte, ``[num_bytes + 1, 1]`` uint8.

    The closing byte keeps an empty text (whisper hears nothing in silence)
    apart from a cut the teacher has no output of (no rows at all).
    """
    if isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 1:
        try:  # a teacher's UTF-8 bytes
            value = value.tobytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValidationError(f"cut {cut_id!r}, teacher {teacher!r}: text output bytes must be UTF-8. Got "
                                  f"{e.reason} at byte {e.start}.", teacher=teacher) from e
    if not isinstance(value, str):
        raise ValidationError(f"cut {cut_id!r}, teacher {teacher!r}: text output must be a str or 1-D uint8 "
                              f"UTF-8 bytes. Got {type(value).__name__}.", teacher=teacher)
    if TEXT_END in value:
        raise ValidationError(f"cut {cut_id!r}, teacher {teacher!r}: text output must not hold a NUL character. "
                              f"Got one at position {value.index(TEXT_END)}.", teacher=teacher)
    try:
        raw = value.encode("utf-8") + TEXT_END.encode()
    except UnicodeEncodeError as e:
        raise ValidationError(f"cut {cut_id!r}, teacher {teacher!r}: text output must be UTF-8 encodable. "
                              f"Got {e.reason} at position {e.start}.", teacher=teacher) from e
    return np.frombuffer(raw, dtype=np.uint8).reshape(-1, 1)


def _check_cut_id(cut_id: Any) -> None:
    if not isinstance(cut_id, str) or not cut_id:
        raise ValidationError(f"a cut ID must be a non-empty str. Got {cut_id!r}.")
    try:
        cut_id.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValidationError(f"a cut ID must be valid unicode (UTF-8 encodable). Got {cut_id!r}.") from e


def _check_codes(cut_id: str, teacher: str, array: np.ndarray, dtype: str) -> None:
    """Integer codes (uint8 codebook indexes) must be whole numbers within the stored dtype's range."""
    top = np.iinfo(dtype).max
    if array.dtype.kind == "f" or (array.size and (int(array.min()) < 0 or int(array.max()) > top)):
        got = f"dtype {array.dtype}" if array.dtype.kind == "f" else f"values {int(array.min())}..{int(array.max())}"
        raise ValidationError(f"cut {cut_id!r}, teacher {teacher!r}: codes must be integers in [0, {top}] "
                              f"({dtype}). Got {got}.", teacher=teacher)
