"""Facts about a store (``info``), a full check (``verify``) and leftovers of dead writers."""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

import mt2kd.store._fs as _fs
from mt2kd.errors import MT2KDError
from mt2kd.store._format import COMMITS_DIR, LOCKS_DIR, METADATA_FILE, SHARDS_DIR, ChecksumError, shard_name
from mt2kd.store._fs import TMP_PREFIX, FsspecLocation, LocalLocation, holder_alive
from mt2kd.store._index import FOREIGN, ShardRecord, commit_path, committed_names, record_is_torn, torn_records
from mt2kd.store._spec import TeacherSpec

if TYPE_CHECKING:
    from mt2kd.store._store import TeacherStore

SECONDS_PER_HOUR = 3600.0
FLOAT32_BYTES = 4  # bytes of one float32 value
FRAME_TOLERANCE = 1.5  # frames a cut may differ from duration x frame_rate (an unpadded 400-sample
# first convolution, as in wav2vec 2.0, drops up to 1.25 frames at 50 Hz)
VERIFY_BATCH = 64  # cuts per read while scanning for NaN/Inf
PROBLEM_KINDS = ("offsets", "malformed", "checksum", "foreign", "unreadable", "nonfinite", "text", "missing",
                 "frame_count", "leftover", "incomplete")
SHARDS_NAMED = 10  # missing shards an "incomplete" problem names (info --json lists them all)


@dataclasses.dataclass(frozen=True)
class Problem:
    """One finding of ``verify``; ``str()`` gives the readable line.

    Examples
    --------
    >>> p = Problem("missing", "cut 'a' is in the manifest but not in the store", cut_id="a")
    >>> str(p), p.kind
    ("cut 'a' is in the manifest but not in the store", 'missing')
    """

    kind: str  # one of PROBLEM_KINDS
    message: str  # the readable line, naming the cut, teacher and shard it concerns
    cut_id: str | None = None  # the cut concerned; None for shard- or store-wide problems
    teacher: str | None = None  # the teacher concerned; None when all or none
    shard: str | None = None  # shard name ("000007"), when the problem lies in one
    store: str | None = None  # URL of the store, set by multi-store views (then str() starts with it)

    def __str__(self) -> str:
        return self.message if self.store is None else f"{self.store}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "text": str(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Problem:
        optional = {k: None if data.get(k) is None else str(data[k]) for k in ("cut_id", "teacher", "shard", "store")}
        return cls(str(data["kind"]), str(data["message"]), **optional)


def failure_kind(reason: str) -> str:
    """The kind of a recorded failure: its reason up to the first ``:`` or ``(``.

    Examples
    --------
    >>> failure_kind("audio could not be decoded: RuntimeError: bad header")
    'audio could not be decoded'
    """
    return re.split(r"[:(]", reason, maxsplit=1)[0].strip() or "other"


def failure_kinds(failures: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Failures per kind (see :func:`failure_kind`), the most frequent first."""
    counts = collections.Counter(failure_kind(str(f["reason"])) for f in failures)
    return dict(counts.most_common())


def store_info(store: TeacherStore) -> dict[str, Any]:
    """Per-teacher and whole-store facts; the CLI prints them as ``key : value`` lines."""
    records = list(store.shards.values())
    failures = store.failures()
    teachers = {name: _teacher_info(spec.to_dict(), name, records) for name, spec in store.specs.items()}
    frames = [t for t in teachers.values() if t["kind"] == "frames"]
    float32 = sum(t["float32_bytes"] for t in teachers.values())
    on_disk = sum(t["bytes_on_disk"] for t in teachers.values())
    return {
        "url": store.url, "format_version": store.format_version, "attrs": dict(store.attrs),
        "random_teachers": store.attrs.get("random_teachers") is True,
        "num_cuts": len(store), "num_shards": len(records), **plan_progress(store), "num_failures": len(failures),
        "failure_kinds": failure_kinds(failures), "failures": failures,
        "num_frames": frames[0]["num_frames"] if frames else None,
        "audio_hours": frames[0]["audio_hours"] if frames else None,
        "bytes_on_disk": sum(size for _, size in store.loc.walk_files("")),
        "teacher_bytes_on_disk": on_disk, "float32_bytes": float32,
        "storage_ratio": on_disk / float32 if float32 else None,
        "teachers": teachers,
        "writers": writers(store),
        "torn_records": torn_records(store.loc, store.shards, store.token),
    }


def plan_progress(store: TeacherStore) -> dict[str, Any]:
    """How much of the extraction plan (attrs ``plan.num_shards``, shards ``0 .. n-1``) is committed.

    ``{"num_planned_shards": None, "missing_shards": []}`` for a store without a plan (not made by
    ``mt2kd extract``).
    """
    plan = store.attrs.get("plan")
    num_planned = plan.get("num_shards") if isinstance(plan, dict) else None
    if not isinstance(num_planned, int) or isinstance(num_planned, bool):
        return {"num_planned_shards": None, "missing_shards": []}
    committed = store.shards
    missing = [name for name in map(shard_name, range(num_planned)) if name not in committed]
    return {"num_planned_shards": num_planned, "missing_shards": missing}


def writers(store: TeacherStore) -> list[dict[str, Any]]:
    """The shard locks held now: shard, host, pid, seconds since the holder's last heartbeat, alive or gone."""
    now = time.time()
    held = []
    for shard, holder in sorted(_lock_holders(store).items()):
        beat = holder.get("beat")
        held.append({"shard": shard, "host": holder.get("host"), "pid": holder.get("pid"),
                     "beat_age_s": round(now - beat, 1) if isinstance(beat, (int, float)) else None,
                     "alive": holder_alive(holder, now)})
    return held


def _teacher_info(spec: dict[str, Any], name: str, records: list[ShardRecord]) -> dict[str, Any]:
    rows = [r.teachers[name] for r in records if name in r.teachers]
    num_rows = sum(r.num_rows for r in rows)
    num_present = sum(int(np.count_nonzero(np.diff(r.offsets))) for r in rows)
    facts = {k: spec[k] for k in ("kind", "dim", "frame_rate", "dtype", "codec", "codec_level", "fingerprint")}
    facts.update(num_cuts=num_present, num_rows=num_rows, bytes_on_disk=sum(r.nbytes for r in rows),
                 float32_bytes=num_rows * spec["dim"] * FLOAT32_BYTES)
    facts["storage_ratio"] = facts["bytes_on_disk"] / facts["float32_bytes"] if num_rows else None
    facts["num_frames"] = num_rows if spec["kind"] == "frames" else None
    facts["audio_hours"] = num_rows / spec["frame_rate"] / SECONDS_PER_HOUR if spec["kind"] == "frames" else None
    return facts


# ---------------------------------------------------------------- verify


def verify_store(store: TeacherStore, durations: Mapping[str, float] | None, complete: bool = False
                 ) -> list[Problem]:
    """Every problem found (see ``TeacherStore.verify``)."""
    problems: list[Problem] = []
    for record in store.shards.values():
        problems += _check_record(store, record)
    problems += [Problem("foreign" if FOREIGN in message else "unreadable", message, shard=name)
                 for name, message in sorted(torn_records(store.loc, store.shards, store.token).items())]
    if durations is not None:
        problems += _check_durations(store, durations)
    if complete:
        problems += _check_plan(store)
    problems += [Problem("leftover", f"uncommitted leftover {path}: {why}", shard=_shard_of(path))
                 for path, why in find_leftovers(store) if why != "abandoned"]
    return problems


def _check_plan(store: TeacherStore) -> list[Problem]:
    """One "incomplete" problem when shards of the extraction plan are not committed (an interrupted run)."""
    progress = plan_progress(store)
    missing, num_planned = progress["missing_shards"], progress["num_planned_shards"]
    if not missing:
        return []
    named = ", ".join(missing[:SHARDS_NAMED]) + (f" and {len(missing) - SHARDS_NAMED:,} more"
                                                 if len(missing) > SHARDS_NAMED else "")
    return [Problem("incomplete", f"the extraction plan has {num_planned:,} shards; {num_planned - len(missing):,} "
                    f"are committed, {len(missing):,} not: {named} (an interrupted run? run it again to resume)")]


def _shard_of(path: str) -> str | None:
    """``shards/000007.3f2a9c0d1b7e`` -> ``000007``."""
    return path.split("/", 1)[1].split(".", 1)[0] if path.startswith(f"{SHARDS_DIR}/") else None


def _check_record(store: TeacherStore, record: ShardRecord) -> list[Problem]:
    problems = []
    for teacher, rows in record.teachers.items():
        offsets = rows.offsets
        if offsets.shape != (record.num_cuts + 1,) or offsets[0] != 0 or np.any(np.diff(offsets) < 0) \
                or offsets[-1] != rows.num_rows:
            problems.append(Problem("offsets", f"shard {record.name}: offsets of teacher {teacher!r} must rise "
                                    f"from 0 to {rows.num_rows} over {record.num_cuts} cuts. "
                                    f"Got {offsets.tolist()[:8]}...", teacher=teacher, shard=record.name))
    if problems:
        return problems
    if record.problems:
        return [Problem("malformed", f"shard {record.name}: the commit record {commit_path(record.name)} is "
                        f"malformed: {'; '.join(record.problems)}", shard=record.name)]
    for start in range(0, record.num_cuts, VERIFY_BATCH):
        jobs = [(record, i) for i in range(start, min(start + VERIFY_BATCH, record.num_cuts))]
        try:
            got = store._reader.read(jobs, list(store.specs))
        except ChecksumError:  # read the batch cut by cut: every corrupt cut is named, the sound ones checked
            got, bad = _read_one_by_one(store, jobs)
            problems += bad
        except (MT2KDError, OSError, ValueError, RuntimeError) as e:
            return [Problem("unreadable", f"shard {record.name} ({record.path}) is unreadable: "
                            f"{type(e).__name__}: {e}", shard=record.name)]
        for (_, i), arrays in zip(jobs, got):
            for teacher, array in arrays.items():
                if store.specs[teacher].kind == "text":
                    problems += _check_text(store.specs[teacher], array, record, record.cut_ids[i])
                    continue
                num_bad = int(array.size - np.count_nonzero(np.isfinite(array)))
                if num_bad:
                    cut_id = record.cut_ids[i]
                    problems.append(Problem("nonfinite", f"cut {cut_id!r}, teacher {teacher!r} (shard "
                                            f"{record.name}): {num_bad} NaN/Inf values", cut_id=cut_id,
                                            teacher=teacher, shard=record.name))
    return problems


def _check_text(spec: TeacherSpec, array: np.ndarray, record: ShardRecord, cut_id: str) -> list[Problem]:
    try:
        spec.text_of(array)
    except UnicodeDecodeError as e:
        return [Problem("text", f"cut {cut_id!r}, teacher {spec.name!r} (shard {record.name}): the text must be "
                        f"UTF-8. Got {e.reason} at byte {e.start}", cut_id=cut_id, teacher=spec.name,
                        shard=record.name)]
    return []


def _read_one_by_one(store: TeacherStore, jobs: list[tuple[ShardRecord, int]]
                     ) -> tuple[list[dict[str, np.ndarray]], list[Problem]]:
    """Each job's arrays (``{}`` for a corrupt one) and a ``checksum`` problem per corrupt cut and teacher."""
    got: list[dict[str, np.ndarray]] = []
    problems = []
    for record, i in jobs:
        arrays: dict[str, np.ndarray] = {}
        for teacher in store.specs:
            try:
                arrays.update(store._reader.read([(record, i)], [teacher])[0])
            except ChecksumError as e:
                problems.append(Problem("checksum", str(e), cut_id=record.cut_ids[i], teacher=teacher,
                                        shard=record.name))
        got.append(arrays)
    return got, problems


def _check_durations(store: TeacherStore, durations: Mapping[str, float]) -> list[Problem]:
    problems = []
    frames = {n: s for n, s in store.specs.items() if s.kind == "frames"}
    failed = {f["cut_id"] for f in store.failures() if f["teacher"] is None}
    for cut_id, duration in durations.items():
        found = store._index.where.get(cut_id)
        if found is None and cut_id in failed:
            continue  # recorded as failed, with its reason: accounted for
        if found is None:
            problems.append(Problem("missing", f"cut {cut_id!r} is in the manifest but not in the store",
                                    cut_id=cut_id))
            continue
        record, position = found
        for name, spec in frames.items():
            rows = record.teachers.get(name)
            if rows is None:
                continue
            num_frames = int(rows.offsets[position + 1] - rows.offsets[position])
            expected = float(duration) * float(spec.frame_rate or 0.0)
            if num_frames and abs(num_frames - expected) > FRAME_TOLERANCE:
                problems.append(Problem("frame_count", f"cut {cut_id!r}, teacher {name!r}: {num_frames} frames "
                                        f"must match {duration:g} s x {spec.frame_rate:g} Hz = {expected:.1f} "
                                        f"+- {FRAME_TOLERANCE}", cut_id=cut_id, teacher=name, shard=record.name))
    return problems


# ---------------------------------------------------------------- leftovers


def find_leftovers(store: TeacherStore) -> Iterator[tuple[str, str]]:
    """(path, why) of data no commit record points at.

    ``why`` is ``"abandoned"`` for an attempt or lock of a writer that is
    gone, and for a stale temporary file of an atomic write a kill
    interrupted (harmless: invisible to readers, removed by the next writer
    of that shard or by ``clean``), ``"in progress"`` for a live writer's attempt
    (not reported by verify), and ``"complete-looking shard group without a
    commit record"`` for a shard group a plain-zarr reader could mistake for
    data (verify reports it).
    """
    # The order matters. A writer takes its lock before it makes its attempt folder, and writes its
    # commit record before it lets the lock go; so an attempt listed first has a lock read after the
    # listing, unless its writer has finished, and then the records read last show whether it committed.
    entries = store.loc.listdir(SHARDS_DIR)
    holders = _lock_holders(store)
    store.refresh()
    live = {r.path.split("/", 1)[1] for r in store.shards.values()}
    for entry in entries:
        if entry in live or entry == METADATA_FILE or "." not in entry or entry.startswith(TMP_PREFIX):
            continue
        shard, attempt = entry.split(".", 1)
        path = f"{SHARDS_DIR}/{entry}"
        if holders.get(shard, {}).get("attempt") == attempt and holder_alive(holders[shard]):
            continue  # being written right now
        if store.loc.exists(f"{path}/{METADATA_FILE}"):
            yield path, "complete-looking shard group without a commit record"
        else:
            yield path, "abandoned"
    for shard, holder in holders.items():
        if not holder_alive(holder):
            yield f"{LOCKS_DIR}/{shard}.lock", "abandoned"
    yield from ((path, "abandoned") for path in _dead_torn_records(store, holders))
    yield from ((path, "abandoned") for path in _stale_temporaries(store))


def _stale_temporaries(store: TeacherStore) -> Iterator[str]:
    """Temporary files of atomic writes (commit records, lock beats, group documents) that a kill left behind.

    Only those older than ``LOCK_STALE_SECONDS``: a younger one may be a
    write in flight. A record folder ``commits/<shard>`` that holds no
    record and nothing younger (a writer killed before it linked its record
    into place) is listed as a whole.
    """
    now = time.time()
    for folder in ("", SHARDS_DIR, COMMITS_DIR, LOCKS_DIR):
        yield from (path for path in _temporaries(store, folder) if _stale(store, path, now))
    if not isinstance(store.loc, LocalLocation):
        return  # fsspec stores write no temporary files: no need for one listing per shard (a request each)
    for name in committed_names(store.loc):
        folder = f"{COMMITS_DIR}/{name}"
        temporaries = _temporaries(store, folder)
        stale = [path for path in temporaries if _stale(store, path, now)]
        if store.loc.exists(f"{folder}/{METADATA_FILE}"):
            yield from stale
        elif len(stale) == len(store.loc.listdir(folder)) and _stale(store, folder, now):
            yield folder


def _dead_torn_records(store: TeacherStore, holders: Mapping[str, Mapping[str, Any]]) -> Iterator[str]:
    """Torn commit records (see TornRecordError) whose shard no live writer holds, once ``LOCK_STALE_SECONDS`` old.

    A younger one may be a record being written right now where there are no
    hard links (created empty, then written).
    """
    now = time.time()
    for name in sorted(torn_records(store.loc, store.shards, store.token)):
        holder = holders.get(name)
        path = commit_path(name)
        if (holder is None or not holder_alive(holder)) and _stale(store, path, now):
            yield path


def _temporaries(store: TeacherStore, folder: str) -> list[str]:
    return [f"{folder}/{name}" if folder else name for name in store.loc.listdir(folder)
            if name.startswith(TMP_PREFIX)]


def _stale(store: TeacherStore, path: str, now: float) -> bool:
    """Whether ``path`` was last modified ``LOCK_STALE_SECONDS`` ago or earlier (False when that cannot be told)."""
    loc = store.loc
    try:
        if isinstance(loc, LocalLocation):
            modified = os.stat(os.path.join(loc.root, path)).st_mtime
        elif isinstance(loc, FsspecLocation):
            modified = loc.fs.modified(f"{loc.root}/{path}").timestamp()
        else:
            return False
    except (OSError, NotImplementedError, AttributeError, ValueError):
        return False
    return now - modified >= _fs.LOCK_STALE_SECONDS


def _lock_holders(store: TeacherStore) -> dict[str, dict[str, Any]]:
    holders = {}
    for name in store.loc.listdir(LOCKS_DIR):
        if name.endswith(".lock"):
            holder = _read_lock(store, name[:-len(".lock")])
            if holder is not None:
                holders[name[:-len(".lock")]] = holder
    return holders


def _read_lock(store: TeacherStore, shard: str) -> dict[str, Any] | None:
    """The JSON of ``shard``'s lock; None when there is none (released, or being written just now)."""
    try:
        holder = json.loads(store.loc.read(f"{LOCKS_DIR}/{shard}.lock"))
    except (FileNotFoundError, ValueError):
        return None
    return holder if isinstance(holder, dict) else {}


def _taken_since(store: TeacherStore, path: str) -> bool:
    """Whether a live writer holds what ``path`` (an attempt folder or a lock) belongs to, read just now.

    Between finding a leftover and removing it a new writer may have taken
    the shard over (its lock) or started the very attempt (a lock read late).
    """
    if path.startswith(f"{LOCKS_DIR}/"):
        holder = _read_lock(store, path[len(LOCKS_DIR) + 1:-len(".lock")])
        return holder is None or holder_alive(holder)  # gone already, or a live writer's now
    shard, _, attempt = path[len(SHARDS_DIR) + 1:].partition(".")
    holder = _read_lock(store, shard)
    return holder is not None and holder.get("attempt") == attempt and holder_alive(holder)


def clean_leftovers(store: TeacherStore) -> list[str]:
    removed = []
    for path, _ in list(find_leftovers(store)):
        if path.startswith(f"{COMMITS_DIR}/"):
            gone = _remove_record_leftover(store, path)
        elif path.rsplit("/", 1)[-1].startswith(TMP_PREFIX):
            store.loc.remove(path)
            gone = True
        elif _taken_since(store, path):
            gone = False
        else:
            store.loc.remove(path)
            gone = True
        if gone:
            removed.append(path)
    return removed


def _remove_torn_record(store: TeacherStore, shard: str) -> bool:
    """Remove ``shard``'s torn commit record, re-checked just now: still torn, and no live writer holds the shard."""
    holder = _read_lock(store, shard)
    if holder is not None and holder_alive(holder) or not record_is_torn(store.loc, shard, store.token):
        return False  # a writer took the shard (and may be writing the record over), or it was written meanwhile
    store.loc.remove(commit_path(shard))
    if isinstance(store.loc, LocalLocation):
        try:
            os.rmdir(os.path.join(store.loc.root, COMMITS_DIR, shard))
        except OSError:  # not empty: a writer's temporary file is there now
            pass
    return True


def _remove_record_leftover(store: TeacherStore, path: str) -> bool:
    """Remove a stale temporary file under ``commits/``, or a record folder holding nothing else.

    A record folder is only ever removed empty (``rmdir``): a record that a
    writer linked into it meanwhile stays, and so does the folder.
    """
    shard, _, temp = path[len(COMMITS_DIR) + 1:].partition("/")
    if temp == METADATA_FILE:
        return _remove_torn_record(store, shard)
    if shard.startswith(TMP_PREFIX) or temp:
        store.loc.remove(path)  # commits/.tmp-* (of commits/zarr.json) or commits/<shard>/.tmp-*
        return True
    if not isinstance(store.loc, LocalLocation):
        return False
    now = time.time()
    for temporary in _temporaries(store, path):
        if _stale(store, temporary, now):
            store.loc.remove(temporary)
    try:
        os.rmdir(os.path.join(store.loc.root, path))
    except OSError:  # not empty: it holds a record (or a write in flight) now
        return False
    return True
