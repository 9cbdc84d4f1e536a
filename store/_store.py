"""``TeacherStore``: create, open, write shards into and read a teacher-label store."""

from __future__ import annotations

import datetime
import json
import os
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mt2kd.errors import ConfigError, CutNotFoundError, StoreError, StoreFormatError, StoreNotFoundError
from mt2kd.store._format import (
    COMMITS_DIR,
    FORMAT_VERSION,
    LOCKS_DIR,
    METADATA_FILE,
    ROOT_KEY,
    SHARDS_DIR,
    group_metadata,
    parse_metadata,
    shard_name,
)
from mt2kd.store._fs import Location, open_location
from mt2kd.store._index import ShardRecord, StoreIndex, load_records
from mt2kd.store._reader import ChunkReader
from mt2kd.store._spec import TeacherSpec
from mt2kd.store._writer import ShardWriter, refuse_live_writers

if TYPE_CHECKING:
    from mt2kd.store._verify import Problem

MODES = ("r", "a")
RESERVED = (SHARDS_DIR, COMMITS_DIR, LOCKS_DIR, METADATA_FILE)  # root entries mt2kd itself writes


class TeacherStore:
    """Teacher outputs of many cuts, keyed by cut ID, in a sharded Zarr v3 store.

    Examples
    --------
    >>> spec = TeacherSpec("whisper", "frames", 4, frame_rate=25.0)
    >>> store = TeacherStore.create("memory://doc-example", [spec], overwrite=True)
    >>> with store.shard_writer(0) as writer:
    ...     writer.put("cut-1", {"whisper": np.ones((3, 4), np.float32)})
    >>> store.get("cut-1")["whisper"].shape
    (3, 4)
    """

    def __init__(self, loc: Location, mode: str, root: Mapping[str, Any]) -> None:
        self.loc, self.mode = loc, mode
        self.format_version = int(root["format_version"])
        self._specs = {s.name: s for s in (TeacherSpec.from_dict(d) for d in root["specs"])}
        self.attrs: dict[str, Any] = dict(root.get("attrs", {}))
        self.token = str(root.get("token") or "")  # new for every store made; every commit record repeats it
        self._reader = ChunkReader(loc, self._specs)
        self._index = StoreIndex(load_records(loc, token=self.token), loc.url)
        self._index_lock = threading.Lock()  # writers in several threads of one process share the index

    # ------------------------------------------------------------ create / open

    @classmethod
    def create(cls, path_or_url: str | os.PathLike[str], specs: Sequence[TeacherSpec],
               attrs: Mapping[str, Any] | None = None, overwrite: bool = False) -> TeacherStore:
        """Make an empty store for ``specs`` (opened in mode ``"a"``).

        ``attrs`` are free JSON facts kept in the root attributes (e.g.
        ``{"random_teachers": True}``). An existing store is an error unless
        ``overwrite`` (which deletes it first); a store that a live writer
        holds a shard of is not deleted (ShardLockedError naming its host and
        process). The new store gets a new token: a writer of the old one
        cannot commit into it.
        """
        specs = _checked_specs(specs)
        try:
            attrs_json = json.loads(json.dumps(dict(attrs or {}), allow_nan=False))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"store attrs must be JSON-serialisable. Got {attrs!r}: {e}") from e
        # everything is checked and serialised before the first write (or deletion): a refused spec leaves nothing
        root = {"format_version": FORMAT_VERSION, "token": uuid.uuid4().hex[:16],
                "specs": [_spec_json(s) for s in specs], "attrs": attrs_json,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "layout": "docs/store-format.md of mt2kd"}
        root_document = group_metadata({ROOT_KEY: root})
        loc = open_location(path_or_url)
        if loc.exists(METADATA_FILE) or loc.listdir(""):
            if not overwrite:
                raise StoreError(f"{loc.url} must not exist yet (pass overwrite=True to replace it). "
                                 "Got an existing store or folder.")
            if not _is_store(loc):  # never delete a folder of something else
                raise StoreError(f"overwrite=True replaces an mt2kd store only. Got a non-empty {loc.url} "
                                 "that is not one; remove it yourself if that is what you want.")
            refuse_live_writers(loc)
            loc.remove("")
        for group in (SHARDS_DIR, COMMITS_DIR):
            loc.write(f"{group}/{METADATA_FILE}", group_metadata({}))
        loc.write(METADATA_FILE, root_document, durable=True)  # last: the store exists once this does
        return cls(loc, "a", root)

    @classmethod
    def open(cls, path_or_url: str | os.PathLike[str], mode: str = "r") -> TeacherStore:
        """Open an existing store: ``"r"`` to read, ``"a"`` to also write shards.

        Raises StoreNotFoundError when nothing is there and StoreFormatError
        for anything that is not a valid mt2kd store (including any array
        with an object dtype or a pickle codec).
        """
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {list(MODES)}. Got {mode!r}.")
        loc = open_location(path_or_url)
        try:
            raw = loc.read(METADATA_FILE)
        except (FileNotFoundError, IsADirectoryError) as e:
            raise StoreNotFoundError(f"a teacher store must exist at {loc.url}. Got no {METADATA_FILE} there.") from e
        doc = parse_metadata(raw, f"{loc.url}/{METADATA_FILE}")
        root = doc.get("attributes", {}).get(ROOT_KEY)
        if not isinstance(root, dict) or "specs" not in root:
            raise StoreFormatError(f"{loc.url} must be an mt2kd store (root attribute {ROOT_KEY!r}). Got none.")
        if int(root.get("format_version", -1)) > FORMAT_VERSION:
            raise StoreFormatError(f"{loc.url}: format_version must be <= {FORMAT_VERSION} for this mt2kd. "
                                   f"Got {root.get('format_version')}.")
        _check_foreign_nodes(loc)
        return cls(loc, mode, root)

    # ------------------------------------------------------------ writing

    def shard_writer(self, shard_id: int | str, replace: bool = False, owner: str = "") -> ShardWriter:
        """A context manager that writes shard ``shard_id`` and commits it when its block ends cleanly.

        Raises ShardCommittedError (on entry) when the shard is committed and
        ``replace`` is False, and ShardLockedError when another live writer
        holds it. A live writer with the same non-empty ``owner`` (an earlier
        attempt of the same task, e.g. the extraction run's token) is waited
        for instead: until it commits (then ShardCommittedError) or dies.
        """
        if self.mode != "a":
            raise StoreError(f"{self.loc.url} is open read-only; open it with mode='a' to write shards.")
        return ShardWriter(self.loc, self._specs, shard_name(shard_id), replace, self._index_for_commit,
                           self._committed, owner, self.token)

    def _index_for_commit(self) -> StoreIndex:
        """The index brought up to date with shards other writers committed meanwhile (only those are read)."""
        with self._index_lock:
            self._index.update(load_records(self.loc, self._index.records, token=self.token))
            return self._index

    def _committed(self, record: ShardRecord) -> None:
        with self._index_lock:
            self._index.add(record)

    def refresh(self) -> None:
        """Re-read every commit record (to see shards committed or replaced since opening)."""
        with self._index_lock:
            self._index = StoreIndex(load_records(self.loc, token=self.token), self.loc.url)

    # ------------------------------------------------------------ reading

    @property
    def specs(self) -> dict[str, TeacherSpec]:
        """Teacher name -> spec, in the order given at creation."""
        return dict(self._specs)

    @property
    def url(self) -> str:
        return self.loc.url

    @property
    def shards(self) -> dict[str, ShardRecord]:
        """Commit records of the committed shards, by shard name (sorted)."""
        return {record.name: record for record in self._index.sorted_records()}

    def is_committed(self, shard_id: int | str) -> bool:
        """Whether shard ``shard_id`` was committed when this view was opened (what a resumed job skips)."""
        return shard_name(shard_id) in self._index.records

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, cut_id: object) -> bool:
        return cut_id in self._index

    def cut_ids(self) -> list[str]:
        return self._index.cut_ids()

    def failures(self) -> list[dict[str, Any]]:
        """Every recorded failure: ``{"cut_id", "teacher", "reason", "shard"}``."""
        return self._index.failures()

    def random_teacher_urls(self) -> list[str]:
        """``[url]`` when the store's attrs say its teachers had random weights (``random_teachers``), else ``[]``."""
        return [self.url] if self.attrs.get("random_teachers") is True else []

    def shapes(self, cut_id: str) -> dict[str, tuple[int, ...]]:
        """Shape of every stored teacher output of ``cut_id`` (as ``get`` would return), read from the index.

        No array data is read: frame counts come from the commit records.

        Examples
        --------
        >>> store.shapes("cut-1")  # doctest: +SKIP
        {'whisper': (3, 4)}
        """
        record, position = self._locate(cut_id)
        shapes: dict[str, tuple[int, ...]] = {}
        for teacher, spec in self._specs.items():
            num_rows = _num_rows(record, teacher, position)
            if num_rows:
                shapes[teacher] = {"frames": (num_rows, spec.dim), "clip": (spec.dim,),
                                   "text": (num_rows - 1,)}[spec.kind]  # a text's bytes less its closing 0
        return shapes

    def num_frames(self, cut_id: str, teacher: str) -> int:
        """Frames of ``teacher`` (a frames teacher) stored for ``cut_id``; 0 when it has no output of it.

        Answered from the index, without reading array data.

        Examples
        --------
        >>> store.num_frames("cut-1", "whisper")  # doctest: +SKIP
        3
        """
        spec = self._specs.get(teacher)
        if spec is None or spec.kind != "frames":
            frames = [t for t, s in self._specs.items() if s.kind == "frames"]
            raise ConfigError(f"num_frames needs a frames teacher, one of {frames}. Got {teacher!r}.")
        record, position = self._locate(cut_id)
        return _num_rows(record, teacher, position)

    def _locate(self, cut_id: str) -> tuple[ShardRecord, int]:
        found = self._index.where.get(cut_id)
        if found is None:
            raise CutNotFoundError(f"cut {cut_id!r} must be in the store {self.loc.url}. "
                                   f"Got no such cut among {len(self._index):,}.")
        return found

    def get(self, cut_id: str) -> dict[str, np.ndarray]:
        """Every stored teacher output of ``cut_id``: frames ``[T, dim]``, clip ``[dim]``, text uint8 bytes.

        ``specs[teacher].text_of(array)`` (or :meth:`texts`) turns a text teacher's bytes into its str.
        """
        return self.get_many([cut_id])[0]

    def get_many(self, cut_ids: Sequence[str], teachers: Iterable[str] | None = None
                 ) -> list[dict[str, np.ndarray]]:
        """``{teacher: array}`` of each cut, in the order of ``cut_ids`` (reads coalesced).

        Examples
        --------
        >>> batch = store.get_many(["cut-1", "cut-2"], teachers=["whisper"])  # doctest: +SKIP
        """
        wanted = self._teachers(teachers)
        where = self._index.where
        jobs = [where.get(c) or self._locate(c) for c in cut_ids]  # _locate raises for an unknown cut
        return self._reader.read(jobs, wanted)

    def texts(self, cut_ids: Sequence[str], teacher: str) -> list[str | None]:
        """The text ``teacher`` (a text teacher) stored for each cut; None where it has no output of the cut.

        Examples
        --------
        >>> store.texts(["cut-1", "cut-2"], "whisper-text")  # doctest: +SKIP
        ['hello world', None]
        """
        spec = self._specs.get(teacher)
        if spec is None or spec.kind != "text":
            texts = [t for t, s in self._specs.items() if s.kind == "text"]
            raise ConfigError(f"texts needs a text teacher, one of {texts}. Got {teacher!r}.")
        return [None if teacher not in got else spec.text_of(got[teacher])
                for got in self.get_many(cut_ids, [teacher])]

    def _teachers(self, teachers: Iterable[str] | None) -> list[str]:
        if teachers is None:
            return list(self._specs)
        chosen = list(teachers)
        unknown = [t for t in chosen if t not in self._specs]
        if unknown:
            raise ConfigError(f"teachers must be among {list(self._specs)}. Got {unknown}.")
        return chosen

    def writers(self) -> list[dict[str, Any]]:
        """The shard locks held now: ``{"shard", "host", "pid", "beat_age_s", "alive"}`` each, by shard name."""
        from mt2kd.store._verify import writers

        return writers(self)

    def info(self) -> dict[str, Any]:
        """Facts about the store for people and ``mt2kd store info``."""
        from mt2kd.store._verify import store_info

        return store_info(self)

    def verify(self, durations: Mapping[str, float] | None = None, complete: bool = False) -> list[Problem]:
        """Problems found by reading everything; an empty list means the store is sound.

        ``durations`` (cut ID -> seconds) adds: every cut must be present (or
        recorded as a whole-cut failure, see :meth:`failures`) and its frame
        counts must match ``duration x frame_rate`` within 1 frame.
        ``complete`` adds: every shard of the extraction plan (attrs
        ``plan.num_shards``) must be committed, else one ``"incomplete"``
        problem names those that are not (an interrupted run); a store
        without a plan is unaffected. ``mt2kd store verify`` passes it.
        Each :class:`Problem` has a ``kind``, the ``cut_id``, ``teacher`` and
        ``shard`` it concerns (None when not one), and ``str()`` reads as a line.

        Examples
        --------
        >>> [str(p) for p in store.verify({"cut-1": 0.12})]  # doctest: +SKIP
        []
        """
        from mt2kd.store._verify import verify_store

        return verify_store(self, durations, complete)

    def leftovers(self) -> list[str]:
        """Paths of data that interrupted writers left behind (invisible to readers)."""
        from mt2kd.store._verify import find_leftovers

        return [path for path, _ in find_leftovers(self)]

    def clean(self) -> list[str]:
        """Remove what :meth:`leftovers` lists whose writer is gone; the removed paths."""
        from mt2kd.store._verify import clean_leftovers

        if self.mode != "a":
            raise StoreError(f"{self.loc.url} is open read-only; open it with mode='a' to clean it.")
        return clean_leftovers(self)

    def __getstate__(self) -> dict[str, Any]:
        """Pickles as its URL and mode (DataLoader workers started with spawn reopen the store)."""
        return {"url": self.loc.url, "mode": self.mode}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(TeacherStore.open(state["url"], state["mode"]).__dict__)

    def __repr__(self) -> str:
        return f"TeacherStore({self.loc.url!r}, mode={self.mode!r}, teachers={list(self._specs)}, cuts={len(self)})"


def _num_rows(record: ShardRecord, teacher: str, position: int) -> int:
    rows = record.teachers.get(teacher)
    return 0 if rows is None else int(rows.offsets[position + 1] - rows.offsets[position])


def _checked_specs(specs: Sequence[TeacherSpec]) -> list[TeacherSpec]:
    specs = list(specs)
    if not specs or not all(isinstance(s, TeacherSpec) for s in specs):
        raise ConfigError(f"specs must be a non-empty list of TeacherSpec. Got {specs!r}.")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"teacher names must be unique. Got {names}.")
    return specs


def _spec_json(spec: TeacherSpec) -> dict[str, Any]:
    """``spec.to_dict()`` as it will read back from the store's JSON; ConfigError naming the teacher if it cannot."""
    try:
        return json.loads(json.dumps(spec.to_dict(), allow_nan=False))  # type: ignore[no-any-return]
    except (TypeError, ValueError) as e:
        raise ConfigError(f"teacher {spec.name!r}: the spec (config included) must be JSON-serialisable. "
                          f"Got config {spec.config!r}: {e}") from e


def _is_store(loc: Location) -> bool:
    try:
        doc = json.loads(loc.read(METADATA_FILE))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and ROOT_KEY in (doc.get("attributes") or {})


def _check_foreign_nodes(loc: Location) -> None:
    """Refuse object/pickle arrays that someone added next to mt2kd's own nodes."""
    for entry in loc.listdir(""):
        if entry in RESERVED or entry.startswith("."):
            continue
        for path, _ in loc.walk_files(entry):
            if path.endswith(METADATA_FILE):
                parse_metadata(loc.read(path), f"{loc.url}/{path}")
