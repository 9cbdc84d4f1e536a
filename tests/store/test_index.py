"""The cut index kept up to date in place: shards added, replaced and dropped, duplicates refused."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

import mt2kd.store._fs as fs
from mt2kd.errors import DuplicateCutError, StoreFormatError
from mt2kd.store import TeacherSpec, TeacherStore
from mt2kd.store._cli_text import info_lines
from mt2kd.store._index import ShardRecord, StoreIndex, commit_path, torn_records

SPEC = TeacherSpec("beats", "clip", 2)


def record(name: str, cut_ids: list[str]) -> ShardRecord:
    return ShardRecord(name, "attempt", cut_ids, {}, [], "", {})


def test_add_update_and_drop_keep_where_equal_to_a_fresh_build() -> None:
    index = StoreIndex({}, "memory://x")
    a, b = record("000001", ["a1", "a2"]), record("000000", ["b1"])
    index.add(a)
    index.add(b)
    assert index.where == {"a1": (a, 0), "a2": (a, 1), "b1": (b, 0)}
    assert index.cut_ids() == ["b1", "a1", "a2"]  # shard by shard, by shard name
    replaced = record("000001", ["a2", "a3"])  # a shard rewritten with replace=True
    index.update({"000000": b, "000001": replaced})
    fresh = StoreIndex({"000000": b, "000001": replaced}, "memory://x")
    assert index.where == fresh.where == {"b1": (b, 0), "a2": (replaced, 0), "a3": (replaced, 1)}
    moved = {"000000": record("000000", ["b1", "a3"]), "000001": record("000001", ["a2"])}
    index.update(moved)  # both shards rewritten, cut a3 moved from one to the other: not a duplicate
    assert index.where == StoreIndex(moved, "memory://x").where
    index.update({"000001": replaced})  # shard 000000 gone (the store was overwritten, say)
    assert index.where == {"a2": (replaced, 0), "a3": (replaced, 1)} and list(index.records) == ["000001"]


def test_a_duplicate_is_refused_by_name_and_leaves_the_index_as_it_was() -> None:
    index = StoreIndex({"000000": record("000000", ["x", "y"])}, "memory://x")
    before = dict(index.where)
    with pytest.raises(DuplicateCutError, match="'y' twice in memory://x: shard 000000 position 1 and shard "
                                                "000001 position 1"):
        index.add(record("000001", ["z", "y"]))
    with pytest.raises(DuplicateCutError, match="'w' twice .* shard 000002 position 0 and shard 000002 position 2"):
        index.add(record("000002", ["w", "v", "w"]))
    assert index.where == before and list(index.records) == ["000000"]


def test_one_store_object_commits_many_shards_and_sees_other_writers(tmp_path: Path) -> None:
    path = tmp_path / "store"
    mine = TeacherStore.create(path, [SPEC])
    other = TeacherStore.open(path, "a")
    value = {"beats": np.ones(2, np.float32)}
    for shard in range(3):
        with mine.shard_writer(shard) as writer:
            writer.put(f"mine-{shard}", value)
    with other.shard_writer(10) as writer:  # another writer: the next commit of `mine` reads only its record
        writer.put("theirs", value)
    with mine.shard_writer(3) as writer:
        writer.put("mine-3", value)
    assert sorted(mine.cut_ids()) == ["mine-0", "mine-1", "mine-2", "mine-3", "theirs"]
    assert mine.cut_ids() == TeacherStore.open(path).cut_ids()  # the same as a fresh open
    with pytest.raises(DuplicateCutError, match="'theirs'"), mine.shard_writer(4) as writer:
        writer.put("theirs", value)
    assert not mine.is_committed(4) and len(TeacherStore.open(path)) == 5


def test_writers_in_threads_share_one_store_object(tmp_path: Path) -> None:
    store = TeacherStore.create(tmp_path / "store", [SPEC])
    value = {"beats": np.ones(2, np.float32)}

    def write(first: int) -> None:
        for shard in range(first, first + 10):
            with store.shard_writer(shard) as writer:
                for i in range(20):
                    writer.put(f"s{shard}-{i}", value)

    threads = [threading.Thread(target=write, args=(10 * t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store) == 800 and store.cut_ids() == TeacherStore.open(tmp_path / "store").cut_ids()


@pytest.mark.parametrize("cut_short", [0, 40, -2], ids=["empty", "cut-at-40-bytes", "last-brace-missing"])
def test_a_torn_record_leaves_its_shard_uncommitted_and_the_store_readable(store_url: str, cut_short: int) -> None:
    """A writer killed between creating its record and writing it (no hard links): the record is empty or short."""
    store = TeacherStore.create(store_url, [SPEC])
    value = {"beats": np.ones(2, np.float32)}
    with store.shard_writer(0) as writer:
        writer.put("a", value)
    with store.shard_writer(1) as writer:
        writer.put("b", value)
    whole = store.loc.read(commit_path("000001"))
    store.loc.write(commit_path("000001"), whole[:cut_short])
    opened = TeacherStore.open(store_url, "a")
    assert list(opened.shards) == ["000000"] and opened.cut_ids() == ["a"] and "b" not in opened
    assert not opened.is_committed(1)
    torn = torn_records(opened.loc, opened.shards)
    assert list(torn) == ["000001"] and "000001/zarr.json" in torn["000001"] and "not JSON" in torn["000001"]
    assert opened.info()["num_shards"] == 1
    # the shard's complete data has no readable record: verify names both (a leftover, the torn record)
    assert sorted((p.kind, p.shard) for p in opened.verify()) == [("leftover", "000001"), ("unreadable", "000001")]
    with opened.shard_writer(1, replace=True) as writer:  # written again: the record is whole once more
        writer.put("b", value)
    assert TeacherStore.open(store_url).cut_ids() == ["a", "b"] and torn_records(opened.loc, {}) == {}


def test_a_torn_record_is_reported_written_over_on_resume_and_cleaned_once_stale(
        store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Verify and info name a torn record; a resumed writer (no replace) commits over it; clean removes a stale one."""
    store = TeacherStore.create(store_url, [SPEC])
    value = {"beats": np.ones(2, np.float32)}
    with store.shard_writer(0) as writer:
        writer.put("a", value)
    store.loc.write(commit_path("000001"), b"")  # a writer of shard 1 killed right after its exclusive create
    opened = TeacherStore.open(store_url, "a")
    problems = opened.verify()
    assert [(p.kind, p.shard) for p in problems] == [("unreadable", "000001")]
    assert "000001/zarr.json must be a complete commit record" in str(problems[0])
    facts = opened.info()
    assert list(facts["torn_records"]) == ["000001"]
    assert any(line.startswith("Torn records") and "000001" in line for line in info_lines(facts))
    assert opened.leftovers() == []  # young: it may be a record being written right now
    with opened.shard_writer(1) as writer:  # a resumed run writes the shard again, over the torn record
        writer.put("b", value)
    reopened = TeacherStore.open(store_url)
    assert reopened.cut_ids() == ["a", "b"] and reopened.verify() == [] and reopened.info()["torn_records"] == {}

    store.loc.write(commit_path("000002"), b"{")  # another torn record, left by a dead writer long ago
    monkeypatch.setattr(fs, "LOCK_STALE_SECONDS", 0.0)
    assert opened.leftovers() == [commit_path("000002")]
    assert opened.clean() == [commit_path("000002")]
    assert not opened.loc.exists(commit_path("000002")) and TeacherStore.open(store_url).verify() == []


@pytest.mark.parametrize("field, value", [("attempt", "0123456789ab/../../../../victim"), ("attempt", ".."),
                                          ("attempt", ""), ("shard", "../../../vic"), ("shard", "000000/.."),
                                          ("shard", "000001")])
def test_a_record_whose_names_would_leave_its_folder_is_refused(tmp_path: Path, field: str, value: str) -> None:
    """A record's shard and attempt become a path (``shards/<shard>.<attempt>``): nothing else is followed."""
    store = TeacherStore.create(tmp_path / "store", [SPEC])
    with store.shard_writer(0) as writer:
        writer.put("a", {"beats": np.ones(2, np.float32)})
    where = tmp_path / "store" / commit_path("000000")
    doc = json.loads(where.read_text())
    doc["attributes"]["mt2kd_commit"][field] = value
    where.write_text(json.dumps(doc))
    with pytest.raises(StoreFormatError, match=rf"000000/zarr.json: the record's {field} must be"):
        TeacherStore.open(tmp_path / "store")
