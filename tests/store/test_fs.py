"""Location.create: exactly one of several writers of a name wins, on every backend; local reads keep few
file descriptors open."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from mt2kd.store import TeacherSpec, TeacherStore, _fs, _reader
from mt2kd.store._fs import open_location

needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc/self/fd")


def test_create_is_exclusive_and_keeps_the_first_content(store_url: str) -> None:
    loc = open_location(store_url)
    assert loc.create("commits/000001/zarr.json", b"first")
    assert not loc.create("commits/000001/zarr.json", b"second")
    assert loc.read("commits/000001/zarr.json") == b"first"


def test_racing_creates_have_one_winner(tmp_path: Path) -> None:
    """Local folders: ``link`` of a complete temp file is atomic (memory:// is one process, under the GIL)."""
    loc = open_location(str(tmp_path / "s.zarr"))
    start = threading.Barrier(8)
    won: list[int] = []

    def race(number: int) -> None:
        start.wait()
        if loc.create("locks/000002.lock", str(number).encode()):
            won.append(number)

    threads = [threading.Thread(target=race, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1 and loc.read("locks/000002.lock") == str(won[0]).encode()


def open_files_under(folder: Path) -> int:
    """How many of this process's file descriptors point at files below ``folder``."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the descriptor os.listdir used, closed by now
        count += target.startswith(str(folder) + os.sep)
    return count


def write_small_shards(path: Path, num_shards: int) -> dict[str, dict[str, np.ndarray]]:
    """A store of ``num_shards`` shards of one cut each, three teachers (three data files a shard)."""
    specs = [TeacherSpec("whisper", "frames", 8, frame_rate=25.0), TeacherSpec("beats", "clip", 4),
             TeacherSpec("ecapa", "clip", 4)]
    store = TeacherStore.create(str(path), specs)
    rng = np.random.default_rng(3)
    outputs: dict[str, dict[str, np.ndarray]] = {}
    for shard in range(num_shards):
        cut_id = f"cut-{shard}"
        outputs[cut_id] = {"whisper": rng.standard_normal((int(rng.integers(1, 40)), 8)).astype(np.float16),
                           "beats": rng.standard_normal(4).astype(np.float32),
                           "ecapa": rng.standard_normal(4).astype(np.float32)}
        with store.shard_writer(shard) as writer:
            writer.put(cut_id, outputs[cut_id])
    return outputs


@needs_proc
def test_reads_keep_at_most_max_maps_files_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every cut one by one, all in one call and a verify over 24 data files keep at most 6 of them open."""
    monkeypatch.setattr(_fs, "MAX_MAPS", 6)
    monkeypatch.setattr(_reader, "MAX_FILES_PER_PASS", 3)
    outputs = write_small_shards(tmp_path / "s.zarr", 8)
    store = TeacherStore.open(str(tmp_path / "s.zarr"))
    for cut_id, expected in outputs.items():
        got = store.get(cut_id)
        for teacher, array in expected.items():
            np.testing.assert_array_equal(got[teacher], array)
        assert open_files_under(tmp_path) <= 6
    for got, expected in zip(store.get_many(list(outputs)), outputs.values()):
        np.testing.assert_array_equal(got["whisper"], expected["whisper"])
    assert open_files_under(tmp_path) <= 6
    assert store.verify() == []
    assert open_files_under(tmp_path) <= 6


@needs_proc
def test_removing_a_file_unmaps_it(tmp_path: Path) -> None:
    write_small_shards(tmp_path / "s.zarr", 1)
    store = TeacherStore.open(str(tmp_path / "s.zarr"))
    store.get("cut-0")
    assert open_files_under(tmp_path) == 3  # one map of each teacher's data file
    store.loc.remove(store.shards["000000"].path)
    assert open_files_under(tmp_path) == 0


LOW_LIMIT_READER = """
import resource, sys
from mt2kd.store import TeacherStore, _fs

resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[2]), resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
store = TeacherStore.open(sys.argv[1])
for cut_id in store.cut_ids():
    store.get(cut_id)
assert len(store.get_many(store.cut_ids())) == len(store)
print("problems", len(store.verify()), "maps", _fs.map_limit())
"""


@needs_proc
def test_a_store_of_more_files_than_the_descriptor_limit_reads_and_verifies(tmp_path: Path) -> None:
    """300 data files (600 descriptors before the maps were bounded) under a limit of 320 open files."""
    limit, num_shards = 320, 100
    assert 3 * num_shards > limit * _fs.MAPS_PER_OPEN_FILE and 2 * 3 * num_shards > limit  # maps are dropped
    write_small_shards(tmp_path / "s.zarr", num_shards)
    done = subprocess.run([sys.executable, "-c", LOW_LIMIT_READER, str(tmp_path / "s.zarr"), str(limit)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    maps = _fs.MAX_MAPS if _fs._UNTRACKED else 80  # Python 3.13's maps hold no descriptor
    assert done.stdout.split() == ["problems", "0", "maps", str(maps)]


def test_the_map_limit_is_a_quarter_of_the_open_files_limit_and_follows_it() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        for lowered in (1024, 400):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(lowered, hard), hard))
            quarter = min(_fs.MAX_MAPS, min(lowered, hard) // 4)
            assert _fs.map_limit() == (_fs.MAX_MAPS if _fs._UNTRACKED else quarter)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_store_opened_again_reads_a_file_that_plain_zarr_rewrote(tmp_path: Path) -> None:
    import zarr

    store = TeacherStore.create(str(tmp_path / "s.zarr"), [TeacherSpec("beats", "clip", 4, codec="none")])
    with store.shard_writer(0) as writer:
        writer.put("a", {"beats": np.ones(4, np.float32)})
    assert store.get("a")["beats"][0] == 1  # mapped by this store object
    data = zarr.open_array(str(tmp_path / "s.zarr" / store.shards["000000"].path / "beats" / "data"), mode="r+")
    data[0, 0] = 7.0  # zarr writes the shard file anew
    assert TeacherStore.open(str(tmp_path / "s.zarr")).get("a")["beats"][0] == 7
