"""Faults that must never give silently wrong data: a store made anew under a live job, malformed records, bit rot."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mt2kd.errors import ShardLockedError, StoreError, StoreFormatError
from mt2kd.store import TeacherSpec, TeacherStore
from mt2kd.store._format import ChecksumError
from mt2kd.store._index import commit_path

SPECS = [TeacherSpec("whisper", "frames", 8, frame_rate=25.0), TeacherSpec("ecapa", "clip", 4)]


def outputs(seed: int, num_frames: int = 40) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"whisper": rng.standard_normal((num_frames, 8)).astype(np.float32),
            "ecapa": rng.standard_normal(4).astype(np.float32)}


def write_shard(store: TeacherStore, shard: int, cut_ids: list[str], replace: bool = False) -> None:
    with store.shard_writer(shard, replace=replace) as writer:
        for i, cut_id in enumerate(cut_ids):
            writer.put(cut_id, outputs(shard * 100 + i))


def test_overwrite_refuses_a_store_with_a_live_writer_naming_host_and_pid(store_url: str) -> None:
    store = TeacherStore.create(store_url, SPECS)
    write_shard(store, 0, ["a"])
    with store.shard_writer(1) as writer:
        writer.put("b", outputs(1))
        with pytest.raises(ShardLockedError, match=f"pid {os.getpid()} on {socket.gethostname()} writing shard "
                                                   "000001"):
            TeacherStore.create(store_url, SPECS, overwrite=True)
    assert TeacherStore.open(store_url).cut_ids() == ["a", "b"]  # nothing was deleted
    TeacherStore.create(store_url, SPECS, overwrite=True)  # no writer left: replaced
    assert len(TeacherStore.open(store_url)) == 0


def test_a_writer_of_the_old_store_cannot_commit_into_the_one_made_anew(store_url: str) -> None:
    """The reproduced race: a job's worker opened the store, --overwrite made it anew, the worker starts a shard."""
    old = TeacherStore.open(TeacherStore.create(store_url, SPECS).url, "a")
    new = TeacherStore.create(store_url, [SPECS[0]], overwrite=True)
    with pytest.raises(StoreError, match="shard 000003 .* must be committed into the store its writer opened .* "
                                         "made anew there meanwhile"):
        write_shard(old, 3, ["stale"])
    reopened = TeacherStore.open(store_url)
    assert len(reopened) == 0 and reopened.verify() == [] and reopened.leftovers() == [] and new.token != old.token


def test_a_record_committed_late_by_the_old_store_counts_as_none_is_reported_and_written_over(
        store_url: str) -> None:
    """The race's last window (the old writer checks the token, the store is made anew, the old record lands)."""
    store = TeacherStore.create(store_url, SPECS)
    write_shard(store, 0, ["a"])
    write_shard(store, 1, ["old-b"])
    doc = json.loads(store.loc.read(commit_path("000001")))
    doc["attributes"]["mt2kd_commit"]["store"] = "0123456789abcdef"  # the token of the store it was meant for
    store.loc.write(commit_path("000001"), json.dumps(doc).encode())
    reopened = TeacherStore.open(store_url, "a")
    assert reopened.cut_ids() == ["a"] and not reopened.is_committed(1) and "old-b" not in reopened
    problems = [p for p in reopened.verify() if p.kind != "leftover"]
    assert [(p.kind, p.shard) for p in problems] == [("foreign", "000001")]
    assert f"pid {os.getpid()} on {socket.gethostname()}" in str(problems[0]) and "0123456789abcdef" in str(problems[0])
    write_shard(reopened, 1, ["b"])  # the rerun writes the shard again, over the foreign record
    final = TeacherStore.open(store_url)
    assert final.cut_ids() == ["a", "b"] and final.verify() == []


@pytest.mark.parametrize("field, value, expected", [
    ("rows_per_chunk", 0, "rows_per_chunk must be >= 1. Got 0"),
    ("num_rows", 10**18, "must rise from 0 to 1000000000000000000"),
    ("both", 10**18, "num_rows must be in"),
    ("nbytes", 10, "need a file of more than"),
], ids=["rows-per-chunk-0", "absurd-num-rows", "absurd-num-rows-and-offsets", "rows-not-matching-chunks"])
def test_a_malformed_record_is_a_verify_problem_and_its_cuts_refuse_to_read(
        store_url: str, field: str, value: int, expected: str) -> None:
    store = TeacherStore.create(store_url, SPECS)
    write_shard(store, 0, ["a"])
    write_shard(store, 1, ["b", "c"])
    doc = json.loads(store.loc.read(commit_path("000001")))
    rows: dict[str, Any] = doc["attributes"]["mt2kd_commit"]["teachers"]["whisper"]
    if field == "both":
        rows["num_rows"] = rows["offsets"][-1] = value
    elif field == "nbytes":
        rows["num_rows"] = rows["offsets"][-1] = 10_000  # more rows than the chunks of its file can hold
        rows["nbytes"] = value
    else:
        rows[field] = value
    store.loc.write(commit_path("000001"), json.dumps(doc).encode())
    reopened = TeacherStore.open(store_url)
    problems = reopened.verify()
    assert [(p.shard, p.teacher is None or p.teacher == "whisper") for p in problems] == [("000001", True)]
    assert expected in str(problems[0]) and problems[0].kind in ("malformed", "offsets")
    np.testing.assert_array_equal(reopened.get("a")["ecapa"], outputs(0)["ecapa"])
    with pytest.raises(StoreFormatError, match=r"cut 'c' cannot be read: the commit record .*000001.* malformed"):
        reopened.get("c")


@pytest.mark.parametrize("codec", ["blosc-lz4", "zstd", "none"])
def test_a_flipped_bit_in_a_data_chunk_fails_the_read_of_its_cut_and_verify_names_it(
        tmp_path: Path, codec: str) -> None:
    import zarr

    spec = TeacherSpec("whisper", "frames", 64, frame_rate=25.0, codec=codec)  # 768 rows a chunk: cuts share one
    store = TeacherStore.create(tmp_path / "store.zarr", [spec])
    frames = {f"cut-{i}": np.random.default_rng(i).standard_normal((500, 64)).astype(np.float16) for i in range(4)}
    with store.shard_writer(0) as writer:
        for cut_id, value in frames.items():
            writer.put(cut_id, {"whisper": value})
    record = store.shards["000000"]
    path = tmp_path / "store.zarr" / record.path / "whisper" / "data" / "c" / "0" / "0"
    entries = store._reader.shard_file(record, "whisper").entries
    blob = bytearray(path.read_bytes())
    blob[int(entries[1, 0]) + 100] ^= 0x04  # one bit of chunk 1: rows 768-1535, of cut-1 (500-999) and cut-2
    path.write_bytes(bytes(blob))
    reopened = TeacherStore.open(tmp_path / "store.zarr")
    with pytest.raises(ChecksumError, match=r"cut 'cut-1', 'cut-2' \(teacher 'whisper', shard 000000\) cannot be "
                                            r"read: .*c/0/0: chunk 1 .* must match its crc32c"):
        reopened.get_many(["cut-0", "cut-1", "cut-2"])
    with pytest.raises(ChecksumError, match="cut 'cut-2'"):
        reopened.get("cut-2")
    for cut_id in ("cut-0", "cut-3"):  # the other chunks still read, exactly
        np.testing.assert_array_equal(reopened.get(cut_id)["whisper"], frames[cut_id])
    problems = reopened.verify()
    assert [(p.kind, p.cut_id, p.teacher) for p in problems] == [("checksum", "cut-1", "whisper"),
                                                                  ("checksum", "cut-2", "whisper")]
    data = zarr.open_array(str(tmp_path / "store.zarr" / record.path / "whisper" / "data"), mode="r")
    with pytest.raises(ValueError, match="checksum"):  # the crc32c is in the array's own codecs: zarr checks it too
        data[800:900]


FULL_CHILD = textwrap.dedent("""
    import resource, signal, sys
    import numpy as np
    from mt2kd.errors import MT2KDError
    from mt2kd.store import TeacherStore

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))
    store = TeacherStore.open(sys.argv[1], "a")
    try:
        with store.shard_writer(1) as writer:
            for i in range(20):
                writer.put(f"big-{i}", {"whisper": np.random.default_rng(i).standard_normal((400, 8)),
                                        "ecapa": np.ones(4)})
    except MT2KDError as e:
        sys.exit(f"{type(e).__name__}: {e}")
""")


def test_a_write_refused_for_room_ends_in_one_line_naming_the_file_and_commits_nothing(tmp_path: Path) -> None:
    """Disk full, a quota or a file-size limit (here RLIMIT_FSIZE, SIGXFSZ ignored, as a batch system sets it)."""
    store = TeacherStore.create(tmp_path / "store.zarr", SPECS)
    write_shard(store, 0, ["a"])
    done = subprocess.run([sys.executable, "-c", FULL_CHILD, str(tmp_path / "store.zarr"), str(16 * 1024)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert re.fullmatch(r"StoreWriteError: .*store.zarr/shards/000001\.[0-9a-f]{12}/whisper/data/c/0/0: the file "
                        r"system refused to write chunk \d+ of the data of teacher 'whisper' after [\d,]+ bytes: "
                        r"File too large \[errno EFBIG\]; nothing of this shard was committed.*\n", done.stderr), \
        done.stderr
    reopened = TeacherStore.open(tmp_path / "store.zarr")
    assert reopened.cut_ids() == ["a"] and reopened.verify() == [] and reopened.leftovers() == []
    assert os.listdir(tmp_path / "store.zarr" / "locks") == []


def test_the_shards_files_and_record_are_on_disk_before_the_record_names_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mt2kd.store._fs as fs

    synced: list[str] = []
    monkeypatch.setattr(fs, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")))
    store = TeacherStore.create(tmp_path / "store.zarr", SPECS)
    synced.clear()
    write_shard(store, 0, ["a", "b"])
    root = str(tmp_path / "store.zarr")
    attempt = f"{root}/{store.shards['000000'].path}"
    files = {os.path.join(folder, name) for folder, _, names in os.walk(attempt) for name in names}
    folders = {folder for folder, _, _ in os.walk(attempt)} | {f"{root}/shards"}
    record = synced.index(next(p for p in synced if os.path.basename(os.path.dirname(p)) == "000000"))
    before = set(synced[:record])  # the record's temporary file is flushed before it is linked into place
    assert files <= before and folders <= before, sorted(files | folders - before)
    assert {f"{root}/commits/000000", f"{root}/commits"} <= set(synced[record:])  # then the record's name
