"""Where a store lives: a local folder or any fsspec URL, behind one small interface.

Local folders get real atomicity (temp file + ``rename``/``link``) and
shard files memory-mapped once per process (a bounded, least recently used
set: see :class:`_MapCache`); fsspec URLs get write-once files and
``cat_file`` ranges. Every path handed to these methods is relative to the
store root and made only of names mt2kd chooses (shard names, teacher names,
attempt tokens): cut IDs never become paths.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import mmap
import os
import shutil
import socket
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, Any

from mt2kd.errors import StoreWriteError

try:
    import resource
except ImportError:  # not on Windows
    resource = None  # type: ignore[assignment]

TMP_PREFIX = ".tmp-"  # temporary files, renamed into place or removed
MAX_MAPS = 4096  # memory-mapped files kept per process, all stores together, at most (see map_limit)
MAPS_PER_OPEN_FILE = 0.25  # share of the process's limit on open files that maps may hold (each holds one before 3.13)
LOCK_BEAT_SECONDS = 30.0  # a shard writer rewrites its lock this often, with the time ("beat")
LOCK_STALE_SECONDS = 300.0  # a lock (of any host) not rewritten for this long is a dead writer's
NO_ROOM = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)  # a write refused for room: disk full, file-size limit, quota


def fsync(fd: int) -> None:
    """``os.fsync``; one name for every flush to disk of the store (bench/commit_bench.py times it off)."""
    os.fsync(fd)


@contextlib.contextmanager
def writing(url: str, path: str, what: str, written: Callable[[], int] | None = None) -> Iterator[None]:
    """Turn a write refused for room (``NO_ROOM``) into one StoreWriteError naming the file and what it held.

    ``written`` gives the bytes of that file written so far, for the message.
    """
    try:
        yield
    except OSError as e:
        if e.errno not in NO_ROOM:
            raise
        so_far = "" if written is None else f" after {written():,} bytes"
        raise StoreWriteError(f"{url}/{path}: the file system refused to write {what}{so_far}: "
                              f"{os.strerror(e.errno or 0)} [errno {errno.errorcode.get(e.errno or 0, e.errno)}]; "
                              "nothing of this shard was committed: make room (or raise the limit) and rerun "
                              "to resume") from None


class Location:
    """Base interface; see :class:`LocalLocation` and :class:`FsspecLocation`."""

    url: str  # what the user passed, for messages

    def read(self, path: str) -> bytes:
        raise NotImplementedError

    def read_many(self, paths: Sequence[str]) -> dict[str, bytes]:
        """Whole files by path; missing ones are left out."""
        found = {}
        for path in paths:
            try:
                found[path] = self.read(path)
            except FileNotFoundError:
                continue
        return found

    def read_ranges(self, path: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """Bytes ``[start, end)`` of ``path`` for every range, in order."""
        raise NotImplementedError

    def read_path_ranges(self, ranges: Sequence[tuple[str, int, int]]) -> list[bytes]:
        """Bytes ``[start, end)`` of ``path`` for every ``(path, start, end)``, in order."""
        by_path: dict[str, list[int]] = {}
        for i, (path, _, _) in enumerate(ranges):
            by_path.setdefault(path, []).append(i)
        out: list[bytes] = [b""] * len(ranges)
        for path, positions in by_path.items():
            got = self.read_ranges(path, [(ranges[i][1], ranges[i][2]) for i in positions])
            for i, data in zip(positions, got):
                out[i] = data
        return out

    def size(self, path: str) -> int:
        raise NotImplementedError

    def exists(self, path: str) -> bool:
        raise NotImplementedError

    def listdir(self, path: str) -> list[str]:
        """Names directly under ``path`` (empty when it does not exist)."""
        raise NotImplementedError

    def walk_files(self, path: str) -> Iterator[tuple[str, int]]:
        """Every file below ``path`` as (relative path, size)."""
        raise NotImplementedError

    def open_write(self, path: str) -> IO[bytes]:
        raise NotImplementedError

    def write(self, path: str, data: bytes, durable: bool = False) -> None:
        """Write ``path`` whole; readers see the old content or the new, never a part.

        ``durable``: on disk (the file and its name) before this returns.
        """
        raise NotImplementedError

    def put(self, path: str, data: bytes) -> None:
        """Write ``path`` whole, not atomically: for files nobody reads before a commit."""
        with self.open_write(path) as f:
            f.write(data)

    def create(self, path: str, data: bytes, durable: bool = False) -> bool:
        """Write ``path`` only if it does not exist yet; False when it did. ``durable`` as in :meth:`write`."""
        raise NotImplementedError

    def sync_tree(self, path: str) -> None:
        """Put every file and folder below ``path`` (and its name) on disk; nothing where writes are final."""

    def remove(self, path: str) -> None:
        """Remove a file or a whole folder; nothing when it is absent."""
        raise NotImplementedError

    def forget_handles(self) -> None:
        """Drop cached handles (after fork, or on close)."""


_UNTRACKED: dict[str, bool] = {"trackfd": False} if sys.version_info >= (3, 13) else {}  # no descriptor per map


class _MapCache:
    """Read-only memory maps of whole files, for every local store object of the process together.

    At most ``map_limit()`` are kept, the least recently used dropped first:
    a map holds a file descriptor (before Python 3.13, whose maps need
    none), and a store has three files per shard, so an unbounded cache runs
    into the process's limit on open files (1,024 by default on Linux) after
    a few hundred shards. A dropped map is unmapped, and its descriptor
    closed, as soon as no read still decodes from it (its last reference
    goes). Maps are kept per store object (``owner``), so a store opened
    anew maps the files as they are now (plain zarr may have rewritten one).
    A forked child closes the maps it inherited and maps anew.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._views: OrderedDict[tuple[int, str], memoryview] = OrderedDict()  # (owner, path in its store) -> map
        # no thread is changing the cache when the process forks, so the child's copy of the lock is free
        os.register_at_fork(before=self._lock.acquire, after_in_parent=self._lock.release,
                            after_in_child=self._after_fork_in_child)

    def get(self, owner: int, root: str, path: str) -> memoryview:
        """The map of file ``path`` of the store at ``root``, for ``owner`` (a LocalLocation)."""
        key = (owner, path)
        view = self._views.get(key)
        if view is not None:  # the hot path takes no lock: each OrderedDict call is atomic under the GIL
            try:
                self._views.move_to_end(key)
            except KeyError:
                pass  # dropped by another thread just now: still valid for this read
            return view
        with self._lock:
            view = self._views.get(key)  # another thread may have mapped it meanwhile
            if view is None:
                limit = map_limit()
                while len(self._views) >= limit:
                    self._views.popitem(last=False)
                with open(os.path.join(root, path), "rb") as f:  # the map keeps what it needs: closed at once
                    view = self._views[key] = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ,
                                                                   **_UNTRACKED))
            return view

    def drop(self, owner: int, path: str) -> None:
        """Forget ``owner``'s maps of ``path`` and of every file below it (all of them for ``""``)."""
        prefix = f"{path}/" if path else ""
        with self._lock:
            for key in [k for k in self._views if k[0] == owner and (k[1] == path or k[1].startswith(prefix))]:
                del self._views[key]

    def _after_fork_in_child(self) -> None:
        inherited, self._views = self._views, OrderedDict()
        self._lock.release()
        for view in inherited.values():
            _close_map(view)


def map_limit() -> int:
    """How many files the process keeps mapped: a quarter of its limit on open files, 1 to ``MAX_MAPS``.

    Asked at every new map (not once at import), so that a limit lowered or
    raised later counts: 256 under Linux's usual default of 1,024.
    """
    if resource is None or _UNTRACKED:  # no limit to ask for here, or maps that hold no descriptor
        return MAX_MAPS
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY or soft < 0:
        return MAX_MAPS
    return max(1, min(MAX_MAPS, int(soft * MAPS_PER_OPEN_FILE)))


def _close_map(view: memoryview) -> None:
    """Unmap ``view``'s file and close its descriptor now, unless something still reads from it."""
    try:
        mapped = view.obj
        view.release()
        mapped.close()  # type: ignore[attr-defined]
    except (BufferError, ValueError):
        pass  # still exported (by a thread that did not survive a fork): closed with its last reference


_MAPS = _MapCache()
_OWNERS = itertools.count()  # a number for every LocalLocation, its part of the keys of _MAPS


class LocalLocation(Location):
    """A store folder on a local (or POSIX network) file system."""

    def __init__(self, root: str) -> None:
        self.url = root
        self.root = os.path.abspath(root)
        self._owner = next(_OWNERS)

    def _abs(self, path: str) -> str:
        return os.path.join(self.root, path) if path else self.root

    def read(self, path: str) -> bytes:
        with open(self._abs(path), "rb") as f:
            return f.read()

    def read_ranges(self, path: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        # no descriptor is kept: readers call this once per file (its shard index), then map the file
        fd = os.open(self._abs(path), os.O_RDONLY)
        try:
            out = []
            for start, end in ranges:
                data = os.pread(fd, end - start, start)
                if len(data) != end - start:
                    raise OSError(f"{self._abs(path)}: expected {end - start} bytes at {start}. Got {len(data)}.")
                out.append(data)
            return out
        finally:
            os.close(fd)

    def map(self, path: str) -> memoryview:
        """The whole file, memory-mapped read-only (cached per process; files are never rewritten in place).

        Shard files are written once and only ever removed whole, so a mapping
        stays valid (a removed file's pages live until the mapping goes).
        Hold the view only while reading: the cache keeps at most ``map_limit()``
        maps open, and one still referenced stays open past that.
        """
        return _MAPS.get(self._owner, self.root, path)

    def size(self, path: str) -> int:
        return os.path.getsize(self._abs(path))

    def exists(self, path: str) -> bool:
        return os.path.exists(self._abs(path))

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(self._abs(path)))
        except FileNotFoundError:
            return []

    def walk_files(self, path: str) -> Iterator[tuple[str, int]]:
        base = self._abs(path)
        for folder, _, files in os.walk(base):
            for name in files:
                full = os.path.join(folder, name)
                yield os.path.relpath(full, self.root), os.path.getsize(full)

    def open_write(self, path: str) -> IO[bytes]:
        os.makedirs(os.path.dirname(self._abs(path)), exist_ok=True)
        return open(self._abs(path), "wb")

    def _temp(self, path: str, data: bytes, durable: bool) -> str:
        full = self._abs(path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        temp = os.path.join(os.path.dirname(full), f"{TMP_PREFIX}{uuid.uuid4().hex}")
        try:
            with open(temp, "wb") as f:
                f.write(data)
                if durable:
                    f.flush()
                    fsync(f.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)  # a write refused for room leaves no temporary file behind
            raise
        return temp

    def write(self, path: str, data: bytes, durable: bool = False) -> None:
        os.replace(self._temp(path, data, durable), self._abs(path))
        if durable:
            self._sync_folder(os.path.dirname(path))

    def create(self, path: str, data: bytes, durable: bool = False) -> bool:
        temp = self._temp(path, data, durable)
        try:
            os.link(temp, self._abs(path))  # atomic, and fails when the name exists
            created = True
        except FileExistsError:
            return False
        except OSError:  # no hard links here (some FUSE/SMB mounts): exclusive create, then write
            created = self._create_exclusive(path, data, durable)
        finally:
            os.unlink(temp)
        if created and durable:
            self._sync_folder(os.path.dirname(path))  # the new name, and the folder's in its parent
            self._sync_folder(os.path.dirname(os.path.dirname(path)))
        return created

    def _create_exclusive(self, path: str, data: bytes, durable: bool) -> bool:
        try:
            fd = os.open(self._abs(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                fsync(f.fileno())
        return True

    def _sync_folder(self, path: str) -> None:
        fd = os.open(self._abs(path), os.O_RDONLY)
        try:
            fsync(fd)
        finally:
            os.close(fd)

    def sync_tree(self, path: str) -> None:
        """fsync every file below ``path``, then every folder (deepest first), then ``path``'s own parent."""
        folders = []
        for folder, _, files in os.walk(self._abs(path)):
            folders.append(folder)
            for name in files:
                fd = os.open(os.path.join(folder, name), os.O_RDONLY)  # Linux flushes a file through any descriptor
                try:
                    fsync(fd)
                finally:
                    os.close(fd)
        for folder in reversed(folders):
            self._sync_folder(os.path.relpath(folder, self.root))
        self._sync_folder(os.path.dirname(path))

    def remove(self, path: str) -> None:
        full = self._abs(path)
        _MAPS.drop(self._owner, path)  # unmapped once no read decoding from them remains
        if os.path.isdir(full):
            shutil.rmtree(full, ignore_errors=True)
        elif os.path.lexists(full):
            os.unlink(full)

    def forget_handles(self) -> None:
        _MAPS.drop(self._owner, "")


class FsspecLocation(Location):
    """A store behind an fsspec URL (``memory://``, ``s3://``, ...).

    Object stores have no rename, and not every backend has create-if-absent:
    files are written once, whole, and :meth:`create` uses the backend's
    exclusive mode where it has one, else checks for the name first (a
    narrow race that per-shard locks make unlikely, not impossible).
    """

    def __init__(self, url: str, fs: Any, root: str) -> None:
        self.url, self.fs, self.root = url, fs, root.rstrip("/")

    def _abs(self, path: str) -> str:
        return f"{self.root}/{path}" if path else self.root

    def read(self, path: str) -> bytes:
        return bytes(self.fs.cat_file(self._abs(path)))

    def read_many(self, paths: Sequence[str]) -> dict[str, bytes]:
        # one call: async file systems (s3, gcs, http) fetch them concurrently
        got = self.fs.cat([self._abs(p) for p in paths], on_error="omit") if paths else {}
        by_full = {self.fs._strip_protocol(k): v for k, v in got.items()}
        return {p: bytes(by_full[self.fs._strip_protocol(self._abs(p))])
                for p in paths if self.fs._strip_protocol(self._abs(p)) in by_full}

    def read_path_ranges(self, ranges: Sequence[tuple[str, int, int]]) -> list[bytes]:
        # one request: async file systems (s3, gcs, http) fetch every range concurrently
        if not ranges:
            return []
        got = self.fs.cat_ranges([self._abs(p) for p, _, _ in ranges], [r[1] for r in ranges],
                                 [r[2] for r in ranges])
        return [bytes(g) for g in got]

    def read_ranges(self, path: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        full = self._abs(path)
        if len(ranges) == 1:
            return [bytes(self.fs.cat_file(full, start=ranges[0][0], end=ranges[0][1]))]
        got = self.fs.cat_ranges([full] * len(ranges), [r[0] for r in ranges], [r[1] for r in ranges])
        return [bytes(g) for g in got]

    def size(self, path: str) -> int:
        return int(self.fs.size(self._abs(path)))

    def exists(self, path: str) -> bool:
        return bool(self.fs.exists(self._abs(path)))

    def listdir(self, path: str) -> list[str]:
        try:
            entries = self.fs.ls(self._abs(path), detail=False)
        except FileNotFoundError:
            return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def walk_files(self, path: str) -> Iterator[tuple[str, int]]:
        base = self._abs(path)
        if not self.fs.exists(base):
            return
        for full, info in self.fs.find(base, detail=True).items():
            yield full[len(self.root) + 1:].lstrip("/"), int(info.get("size") or 0)

    def open_write(self, path: str) -> IO[bytes]:
        return self.fs.open(self._abs(path), "wb")  # type: ignore[no-any-return]

    def write(self, path: str, data: bytes, durable: bool = False) -> None:
        self.fs.pipe_file(self._abs(path), data)  # an object store's write is durable once it returns

    def create(self, path: str, data: bytes, durable: bool = False) -> bool:
        """Exclusive create: ``open(mode="xb")``, which backends with conditional writes (s3fs's
        If-None-Match, gcsfs's generation 0, adlfs) make atomic; a backend without mode "x" gets
        check-then-write, whose race window docs/store-format.md describes.
        """
        full = self._abs(path)
        if self.fs.exists(full):  # cheap answer for the common case, and the only check without "xb"
            return False
        try:
            with self.fs.open(full, "xb") as f:
                f.write(data)
        except FileExistsError:
            return False
        except (ValueError, NotImplementedError):  # this backend has no exclusive mode
            self.fs.pipe_file(full, data)
        return True

    def remove(self, path: str) -> None:
        full = self._abs(path)
        if self.fs.exists(full):
            self.fs.rm(full, recursive=self.fs.isdir(full))


def open_location(path_or_url: str | os.PathLike[str]) -> Location:
    """A :class:`Location` for a local path (or ``file://`` URL) or any fsspec URL."""
    text = os.fspath(path_or_url)
    if "://" not in text or text.startswith("file://"):
        return LocalLocation(text[len("file://"):] if text.startswith("file://") else text)
    import fsspec

    fs, root = fsspec.core.url_to_fs(text)
    return FsspecLocation(text, fs, root)


def holder_alive(holder: Mapping[str, Any], now: float | None = None) -> bool:
    """Whether the writer that holds a shard lock (the lock file's JSON) may still be running.

    A writer rewrites its lock every ``LOCK_BEAT_SECONDS``, so one whose
    last beat is ``LOCK_STALE_SECONDS`` old is gone, on any host: on this
    one too, where its pid may since belong to another process (a restarted
    container keeps its hostname and hands out the same pids). Otherwise, on
    this host, its pid answers at once: the writer is gone when it is. On
    another host (a worker of another node, a SLURM job that was preempted
    or lost its node) only the heartbeat can tell; that assumes the hosts'
    clocks agree to within a few minutes. A lock without a beat is taken to
    be alive unless its pid here is gone.
    """
    beat = holder.get("beat")
    if isinstance(beat, (int, float)) and (time.time() if now is None else now) - beat >= LOCK_STALE_SECONDS:
        return False
    host = str(holder.get("host"))
    if host == socket.gethostname():
        return process_alive(host, int(holder.get("pid", -1)))
    return True


def process_alive(host: str, pid: int) -> bool:
    """Whether ``pid`` on ``host`` may still run (other hosts are assumed alive)."""
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
