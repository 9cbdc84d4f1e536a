"""Commit records and the in-memory index cut ID -> (shard, position).

A shard becomes part of the store when its commit record
``commits/<shard>/zarr.json`` appears: a Zarr v3 group whose attributes hold
the shard's cut IDs, every teacher's row offsets and the recorded failures.
Opening a store reads these small documents only, never the data arrays,
so the whole index is in memory before the first ``get``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn

import numpy as np

from mt2kd.errors import DuplicateCutError, StoreFormatError
from mt2kd.store._format import (
    COMMIT_KEY,
    COMMITS_DIR,
    METADATA_FILE,
    SHARD_NAME,
    SHARDS_DIR,
    index_nbytes,
    num_chunks_of,
    parse_metadata,
)
from mt2kd.store._fs import TMP_PREFIX, Location


@dataclasses.dataclass(frozen=True)
class TeacherRows:
    """Where one teacher's rows of one shard are."""

    offsets: np.ndarray  # int64 [num_cuts + 1]; rows of cut i are offsets[i]:offsets[i+1]
    rows_per_chunk: int  # rows of one inner chunk of the data array
    num_rows: int  # rows of the data array (frames, or clip outputs present)
    nbytes: int  # bytes of the shard file (data chunks + index)

    def to_dict(self) -> dict[str, Any]:
        return {"offsets": self.offsets.tolist(), "rows_per_chunk": self.rows_per_chunk,
                "num_rows": self.num_rows, "nbytes": self.nbytes}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TeacherRows:
        return cls(np.asarray(data["offsets"], dtype=np.int64), int(data["rows_per_chunk"]),
                   int(data["num_rows"]), int(data["nbytes"]))


@dataclasses.dataclass(frozen=True)
class ShardRecord:
    """The commit record of one shard: what it holds and where."""

    name: str  # shard name ("000007")
    attempt: str  # token of the writer attempt whose data this commits
    cut_ids: list[str]  # cuts in row order
    teachers: dict[str, TeacherRows]  # per teacher present in the store's specs
    failures: list[dict[str, Any]]  # {"cut_id", "teacher" (or None), "reason"}
    created: str  # ISO time of the commit, UTC
    writer: dict[str, Any]  # {"host", "pid"} of the committing process
    store: str = ""  # token of the store the writer opened (root attribute "token"); "" in stores made before it
    problems: tuple[str, ...] = ()  # what is malformed in the record (found when parsed; reads of it refuse)

    @property
    def path(self) -> str:
        """The shard's data group, relative to the store root."""
        return f"{SHARDS_DIR}/{self.name}.{self.attempt}"

    @property
    def num_cuts(self) -> int:
        return len(self.cut_ids)

    def to_dict(self) -> dict[str, Any]:
        return {"shard": self.name, "attempt": self.attempt, "path": self.path, "num_cuts": self.num_cuts,
                "cut_ids": self.cut_ids, "teachers": {t: r.to_dict() for t, r in self.teachers.items()},
                "failures": self.failures, "created": self.created, "writer": self.writer, "store": self.store}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ShardRecord:
        record = cls(str(data["shard"]), str(data["attempt"]), [str(c) for c in data["cut_ids"]],
                     {t: TeacherRows.from_dict(r) for t, r in data["teachers"].items()},
                     list(data.get("failures", [])), str(data.get("created", "")), dict(data.get("writer", {})),
                     str(data.get("store", "")))
        return dataclasses.replace(record, problems=tuple(record_problems(record)))


MAX_ROWS = 2**40  # rows of one teacher in one shard beyond which a record is absurd (a 1 h shard has ~90,000)


def record_problems(record: ShardRecord) -> list[str]:
    """What makes a record's row bookkeeping impossible: each a readable sentence naming the teacher.

    A reader never trusts such a record (reading it could divide by zero, read
    past its file or allocate absurd arrays): its cuts refuse to read and
    ``verify`` reports it.
    """
    problems = []
    for teacher, rows in record.teachers.items():
        offsets = rows.offsets
        if rows.rows_per_chunk < 1:
            problems.append(f"teacher {teacher!r}: rows_per_chunk must be >= 1. Got {rows.rows_per_chunk}")
        elif not 0 <= rows.num_rows <= MAX_ROWS:
            problems.append(f"teacher {teacher!r}: num_rows must be in [0, {MAX_ROWS}]. Got {rows.num_rows}")
        elif offsets.shape != (record.num_cuts + 1,) or offsets[0] != 0 or np.any(np.diff(offsets) < 0) \
                or offsets[-1] != rows.num_rows:
            problems.append(f"teacher {teacher!r}: offsets must rise from 0 to num_rows {rows.num_rows} over "
                            f"{record.num_cuts} cuts. Got {offsets.tolist()[:8]}...")
        elif rows.num_rows and rows.nbytes < index_nbytes(num_chunks_of(rows.num_rows, rows.rows_per_chunk)):
            problems.append(f"teacher {teacher!r}: {rows.num_rows} rows in chunks of {rows.rows_per_chunk} need a "
                            f"file of more than {index_nbytes(num_chunks_of(rows.num_rows, rows.rows_per_chunk))} "
                            f"bytes (the chunk index alone). Got nbytes {rows.nbytes}")
    return problems


def commit_path(name: str) -> str:
    return f"{COMMITS_DIR}/{name}/{METADATA_FILE}"


class TornRecordError(StoreFormatError):
    """A commit record that is not even JSON: empty or cut short (its writer was killed while writing it).

    Where there are no hard links a record is created, then written, so a
    writer killed in between leaves one. The shard counts as not committed.
    """


def read_record(loc: Location, name: str, token: str = "") -> ShardRecord | None:
    """The commit record of shard ``name``; None when the shard is not committed.

    Not committed: no record, a torn one, or (with the store's ``token``) a
    record of another store made at the same place (see :func:`is_foreign`).
    """
    path = commit_path(name)
    try:
        raw = loc.read(path)
    except FileNotFoundError:
        return None
    try:
        record = parse_record(raw, f"{loc.url}/{path}", name)
    except TornRecordError:
        return None
    return None if is_foreign(record, token) else record


def is_foreign(record: ShardRecord, token: str) -> bool:
    """Whether ``record`` was committed by a writer of another store than the one whose token is ``token``.

    A store made anew at the same place (``overwrite``) has a new token; a
    writer of the old one that commits late leaves a record with the old
    token, which readers do not count. Stores made before tokens have none
    (``""``) and check nothing.
    """
    return bool(token) and record.store != token


FOREIGN = "was committed by a writer of another store"  # the words that tell a foreign record's message


def foreign_text(record: ShardRecord, token: str, where: str) -> str:
    return (f"{where} {FOREIGN} at this place (token {record.store or '(none)'}, "
            f"this store's is {token}; pid {record.writer.get('pid')} on {record.writer.get('host')} at "
            f"{record.created}, a job still running when the store was made anew?); its shard counts as not "
            "committed until it is written again")


def record_is_torn(loc: Location, name: str, token: str = "") -> bool:
    """Whether shard ``name`` has a commit record that is not JSON (see TornRecordError), or, with the
    store's ``token``, one of another store (:func:`is_foreign`): either may be written over."""
    try:
        raw = loc.read(commit_path(name))
    except FileNotFoundError:
        return False
    if not _is_json(raw):
        return True
    if not token:
        return False
    try:
        return is_foreign(parse_record(raw, f"{loc.url}/{commit_path(name)}", name), token)
    except StoreFormatError:
        return False


def parse_record(raw: bytes, where: str, name: str | None = None) -> ShardRecord:
    """The record in ``raw`` (the record of shard ``name``, when given).

    Raises TornRecordError when ``raw`` is not JSON, and StoreFormatError
    for any other document that is not a valid record: its shard and attempt
    become a path, so each must be 1-64 of ``[A-Za-z0-9_-]``.
    """
    try:
        doc = parse_metadata(raw, where)
    except StoreFormatError as e:
        if not _is_json(raw):
            raise TornRecordError(f"{where} must be a complete commit record. Got {len(raw)} bytes that are not "
                                  "JSON (a writer killed while writing it?); the shard counts as not committed "
                                  "until it is written again.") from e
        raise
    try:
        record = ShardRecord.from_dict(doc["attributes"][COMMIT_KEY])
    except (KeyError, TypeError, ValueError) as e:
        raise StoreFormatError(f"{where} must hold a '{COMMIT_KEY}' record. Got {e!r}.") from e
    for field, value in (("shard", record.name), ("attempt", record.attempt)):
        if not SHARD_NAME.fullmatch(value):
            raise StoreFormatError(f"{where}: the record's {field} must be 1-64 of [A-Za-z0-9_-] (it becomes a "
                                   f"path). Got {value!r}.")
    if name is not None and record.name != name:
        raise StoreFormatError(f"{where}: the record's shard must be {name!r}, the folder it is in. "
                               f"Got {record.name!r}.")
    return record


def _is_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except ValueError:
        return False
    return True


def committed_names(loc: Location) -> list[str]:
    return [n for n in loc.listdir(COMMITS_DIR) if not n.startswith(TMP_PREFIX) and n != METADATA_FILE]


def load_records(loc: Location, known: Mapping[str, ShardRecord] | None = None,
                 torn: dict[str, str] | None = None, token: str = "") -> dict[str, ShardRecord]:
    """Every commit record, by shard name; records in ``known`` are reused, not re-read.

    A torn record (see TornRecordError), and with the store's ``token`` a
    record of another store (:func:`is_foreign`), is left out: its shard is
    not committed. ``torn``, when given, receives the message about each, by
    shard name.
    """
    known = known or {}
    names = committed_names(loc)
    fresh = loc.read_many([commit_path(n) for n in names if n not in known])
    records: dict[str, ShardRecord] = {}
    for name in names:
        record = known.get(name)
        raw = fresh.get(commit_path(name))
        if record is None and raw is not None:
            try:
                record = parse_record(raw, f"{loc.url}/{commit_path(name)}", name)
            except TornRecordError as e:
                if torn is not None:
                    torn[name] = str(e)
            if record is not None and is_foreign(record, token):
                if torn is not None:
                    torn[name] = foreign_text(record, token, f"{loc.url}/{commit_path(name)}")
                record = None
        if record is not None:
            records[name] = record
    return records


def torn_records(loc: Location, known: Mapping[str, ShardRecord], token: str = "") -> dict[str, str]:
    """Shard name -> message for every torn (or, with ``token``, foreign) commit record; only records not in
    ``known`` are read.

    For ``verify`` and ``info``: pass the records a store has loaded (a torn
    one is never among them), so that only the few others are read.
    """
    torn: dict[str, str] = {}
    load_records(loc, known, torn, token)
    return torn


class StoreIndex:
    """Cut ID -> (shard record, position), built from the commit records and kept up to date in place.

    Adding a shard costs its own cuts, not the store's: a long extraction run
    commits thousands of shards through one index.

    Examples
    --------
    >>> index = StoreIndex({}, "memory://x")
    >>> len(index)
    0
    """

    def __init__(self, records: Mapping[str, ShardRecord], url: str) -> None:
        self.url = url
        self.records: dict[str, ShardRecord] = {}  # by shard name, in the order added
        self.where: dict[str, tuple[ShardRecord, int]] = {}
        for record in records.values():
            self.add(record)

    def add(self, record: ShardRecord) -> None:
        """Index a newly committed shard (replacing the record of that shard, if one was indexed).

        A cut ID that another shard holds raises DuplicateCutError and leaves
        the index as it was.
        """
        clash = self._held_elsewhere(record.cut_ids, record.name)
        if clash is not None:
            cut_id, position, (other, other_position) = clash
            self._refuse(cut_id, other.name, other_position, record.name, position)
        seen: dict[str, int] = {}
        for position, cut_id in enumerate(record.cut_ids):
            if cut_id in seen:
                self._refuse(cut_id, record.name, seen[cut_id], record.name, position)
            seen[cut_id] = position
        self._drop(record.name)
        self.records[record.name] = record
        self.where.update((cut_id, (record, position)) for position, cut_id in enumerate(record.cut_ids))

    def _refuse(self, cut_id: str, first: str, first_position: int, second: str, second_position: int
                ) -> NoReturn:
        raise DuplicateCutError(f"cut IDs must be unique within a store. Got {cut_id!r} twice in {self.url}: "
                                f"shard {first} position {first_position} and shard {second} position "
                                f"{second_position}.")

    def _drop(self, name: str) -> None:
        old = self.records.pop(name, None)
        if old is not None:
            for cut_id in old.cut_ids:
                if self.where.get(cut_id, (None,))[0] is old:
                    del self.where[cut_id]

    def update(self, records: Mapping[str, ShardRecord]) -> None:
        """Make the index hold exactly ``records``, touching only the shards that changed.

        Every shard that went or changed is dropped before any is added, so
        a cut that moved from one rewritten shard to another is not taken
        for a duplicate.
        """
        changed = [r for name, r in records.items() if self.records.get(name) is not r]
        for name in [n for n in self.records if n not in records]:
            self._drop(name)
        for record in changed:
            self._drop(record.name)
        for record in changed:
            self.add(record)

    def sorted_records(self) -> list[ShardRecord]:
        return [self.records[name] for name in sorted(self.records)]

    def __len__(self) -> int:
        return len(self.where)

    def __contains__(self, cut_id: object) -> bool:
        return cut_id in self.where

    def cut_ids(self) -> list[str]:
        """Every cut ID, shard by shard (sorted shard names), in row order."""
        return [c for record in self.sorted_records() for c in record.cut_ids]

    def failures(self) -> list[dict[str, Any]]:
        return [{**f, "shard": r.name} for r in self.sorted_records() for f in r.failures]

    def check_new(self, cut_ids: Iterable[str], shard: str) -> None:
        """Refuse cuts of ``shard`` that another committed shard already holds."""
        clash = self._held_elsewhere(cut_ids, shard)
        if clash is not None:
            cut_id, position, (other, other_position) = clash
            raise DuplicateCutError(
                f"cut IDs must be unique within a store. Got {cut_id!r} in shard {shard} position "
                f"{position}, already committed in shard {other.name} position {other_position} of {self.url}.")

    def _held_elsewhere(self, cut_ids: Iterable[str], shard: str) -> tuple[str, int, tuple[ShardRecord, int]] | None:
        """The first of ``cut_ids`` that a shard other than ``shard`` holds: (cut ID, position, where)."""
        for position, cut_id in enumerate(cut_ids):
            before = self.where.get(cut_id)
            if before is not None and before[0].name != shard:
                return cut_id, position, before
        return None
