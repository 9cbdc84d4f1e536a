"""Crashes and concurrency across real processes: SIGKILL mid-shard, parallel writers, one commit per shard."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mt2kd.errors import ShardCommittedError, ShardLockedError
from mt2kd.store import TeacherSpec, TeacherStore

SPECS = [TeacherSpec("whisper", "frames", 32, frame_rate=25.0), TeacherSpec("ecapa", "clip", 6)]
PROCESS_TIMEOUT = 120  # s, generous for a loaded 2-core machine

# A child process writing shards; cut i of shard s has whisper frames filled with s * 1000 + i.
CHILD = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from mt2kd.store import TeacherStore

    path, shards, num_cuts, kill_at = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), int(sys.argv[4])
    store = TeacherStore.open(path, mode="a")
    for shard in map(int, shards):
        with store.shard_writer(shard) as writer:
            for i in range(num_cuts):
                if i == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)  # no cleanup of any kind runs
                value = np.full((40 + i, 32), shard * 1000 + i, np.float32)
                writer.put(f"shard{shard}/cut{i}", {"whisper": value, "ecapa": np.full(6, i, np.float32)})
""")


def run_child(path: Path, shards: str, num_cuts: int, kill_at: int = -1) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(path), shards, str(num_cuts), str(kill_at)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(child: subprocess.Popen[str]) -> tuple[int, str]:
    """Exit status and stderr of a child, once it has ended."""
    _, stderr = child.communicate(timeout=PROCESS_TIMEOUT)
    return child.returncode, stderr


def expected_frames(shard: int, i: int) -> np.ndarray:
    return np.full((40 + i, 32), shard * 1000 + i, np.float16)


def test_sigkill_mid_shard_leaves_a_clean_store_and_a_rewritable_shard(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    TeacherStore.create(str(path), SPECS)
    code, stderr = finish(run_child(path, "0,1", num_cuts=300))
    assert code == 0, stderr
    killed = run_child(path, "2", num_cuts=300, kill_at=150)  # 150 cuts into shard 2: many chunks on disk
    assert finish(killed)[0] == -9
    store = TeacherStore.open(str(path))
    assert len(store) == 600 and "shard2/cut0" not in store
    assert store.verify() == []
    assert len(store.leftovers()) == 2  # the dead writer's attempt folder and lock, invisible to readers
    code, stderr = finish(run_child(path, "2", num_cuts=5))  # the shard can be written again
    assert code == 0, stderr
    store = TeacherStore.open(str(path))
    assert len(store) == 605 and store.verify() == [] and store.leftovers() == []
    np.testing.assert_array_equal(store.get("shard2/cut4")["whisper"], expected_frames(2, 4))


def test_kill_between_data_and_commit_record_is_reported_then_cleaned(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    TeacherStore.create(str(path), SPECS)
    code = CHILD.replace("store = TeacherStore.open(path, mode=\"a\")", textwrap.dedent("""
        from mt2kd.store._writer import ShardWriter
        ShardWriter._publish = lambda self, record: os.kill(os.getpid(), signal.SIGKILL)
        store = TeacherStore.open(path, mode="a")"""))
    killed = subprocess.run([sys.executable, "-c", code, str(path), "0", "3", "-1"], timeout=PROCESS_TIMEOUT)
    assert killed.returncode == -9
    store = TeacherStore.open(str(path), mode="a")
    assert len(store) == 0
    problems = store.verify()
    assert len(problems) == 1 and "complete-looking shard group without a commit record" in str(problems[0])
    assert (problems[0].kind, problems[0].shard, problems[0].cut_id) == ("leftover", "000000", None)
    assert len(store.clean()) == 2 and store.verify() == []


def test_processes_writing_different_shards_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    TeacherStore.create(str(path), SPECS)
    children = [run_child(path, "0,2,4,6", num_cuts=12), run_child(path, "1,3,5,7", num_cuts=12)]
    for child in children:
        code, stderr = finish(child)
        assert code == 0, stderr
    store = TeacherStore.open(str(path))
    assert len(store) == 8 * 12 and len(store.shards) == 8 and store.verify() == []
    cut_ids = [f"shard{s}/cut{i}" for s in range(8) for i in range(12)]
    for cut_id, got in zip(cut_ids, store.get_many(cut_ids)):
        shard, i = int(cut_id[5]), int(cut_id.split("cut")[1])
        np.testing.assert_array_equal(got["whisper"], expected_frames(shard, i))
        np.testing.assert_array_equal(got["ecapa"], np.full(6, i, np.float32))


HOLDER = textwrap.dedent("""
    import pathlib, sys, time
    import numpy as np
    from mt2kd.store import TeacherStore

    path, ready, go = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
    with TeacherStore.open(path, mode="a").shard_writer(0) as writer:
        writer.put("held", {"ecapa": np.ones(6, np.float32)})
        ready.touch()
        while not go.exists():
            time.sleep(0.02)
""")


def test_a_second_process_cannot_write_a_held_or_committed_shard(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    TeacherStore.create(str(path), SPECS)
    ready, go = tmp_path / "ready", tmp_path / "go"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(ready), str(go)])
    deadline = time.monotonic() + PROCESS_TIMEOUT
    while not ready.exists() and holder.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    other = TeacherStore.open(str(path), mode="a")
    with pytest.raises(ShardLockedError, match=f"pid {holder.pid}"):
        with other.shard_writer(0) as writer:
            writer.put("other", {"ecapa": np.zeros(6, np.float32)})
    go.touch()
    assert holder.wait(PROCESS_TIMEOUT) == 0
    with pytest.raises(ShardCommittedError):
        with other.shard_writer(0):
            pass
    assert TeacherStore.open(str(path)).cut_ids() == ["held"]


def test_a_writer_that_lost_its_lock_does_not_commit(store_url: str) -> None:
    store = TeacherStore.create(store_url, SPECS)
    first, second = store.shard_writer(0), store.shard_writer(0)
    first.__enter__()
    store.loc.remove("locks/000000.lock")  # as if the first writer had been taken for dead
    second.__enter__()
    first.put("from-first", {"ecapa": np.ones(6, np.float32)})
    second.put("from-second", {"ecapa": np.zeros(6, np.float32)})
    with pytest.raises(ShardLockedError, match="taken over by another writer while this one wrote it"):
        first.__exit__(None, None, None)
    assert store.loc.exists("locks/000000.lock")  # the first one leaves the second one's lock alone
    second.__exit__(None, None, None)
    reopened = TeacherStore.open(store_url)
    assert reopened.cut_ids() == ["from-second"] and reopened.verify() == []
    assert not reopened.loc.exists("locks/000000.lock")


def test_two_writers_past_the_lock_never_both_commit(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Even where both believe they hold the lock (an object store race), the commit record is created once."""
    from mt2kd.store._writer import ShardWriter

    monkeypatch.setattr(ShardWriter, "_holds_lock", lambda self: True)
    store = TeacherStore.create(store_url, SPECS)
    first, second = store.shard_writer(0), store.shard_writer(0)
    first.__enter__()
    store.loc.remove("locks/000000.lock")
    second.__enter__()
    first.put("from-first", {"ecapa": np.ones(6, np.float32)})
    second.put("from-second", {"ecapa": np.zeros(6, np.float32)})
    first.__exit__(None, None, None)
    with pytest.raises(ShardCommittedError, match="another writer meanwhile"):
        second.__exit__(None, None, None)
    reopened = TeacherStore.open(store_url)
    assert reopened.cut_ids() == ["from-first"] and reopened.verify() == []


@pytest.mark.parametrize("error", [KeyboardInterrupt("Ctrl-C"), OSError("network unreachable")])
def test_a_replace_whose_old_attempt_cannot_be_deleted_keeps_the_new_data(
        store_url: str, monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    store = TeacherStore.create(store_url, SPECS)
    with store.shard_writer(0) as writer:
        writer.put("a", {"ecapa": np.ones(6, np.float32)})
    old_path = store.shards["000000"].path
    remove = store.loc.remove

    def failing_remove(path: str) -> None:
        if path == old_path:
            raise error  # interrupted while deleting a big old attempt, or the object store went away
        remove(path)

    writer = store.shard_writer(0, replace=True).__enter__()
    writer.put("a", {"ecapa": np.full(6, 2.0, np.float32)})
    monkeypatch.setattr(store.loc, "remove", failing_remove)
    if isinstance(error, KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):
            writer.__exit__(None, None, None)
    else:
        writer.__exit__(None, None, None)  # committed: the failed deletion is not the commit's failure
    monkeypatch.setattr(store.loc, "remove", remove)
    reopened = TeacherStore.open(store_url, mode="a")
    assert reopened.shards["000000"].attempt == writer.attempt
    np.testing.assert_array_equal(reopened.get("a")["ecapa"], np.full(6, 2.0, np.float32))
    assert not reopened.loc.exists("locks/000000.lock")
    assert reopened.leftovers() == [old_path]  # the old attempt is a leftover now, which clean removes
    assert reopened.clean() == [old_path] and reopened.verify() == []


def test_a_commit_whose_create_reports_exists_for_its_own_record_keeps_its_data(
        store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = TeacherStore.create(store_url, SPECS)
    create = store.loc.create

    def lost_reply(path: str, data: bytes, durable: bool = False) -> bool:
        created = create(path, data, durable)
        return created and not path.startswith("commits/")  # created, but the retry after a lost reply saw it

    monkeypatch.setattr(store.loc, "create", lost_reply)
    with store.shard_writer(0) as writer:
        writer.put("a", {"ecapa": np.ones(6, np.float32)})
    reopened = TeacherStore.open(store_url)
    assert reopened.shards["000000"].attempt == writer.attempt and reopened.verify() == []
    np.testing.assert_array_equal(reopened.get("a")["ecapa"], np.ones(6, np.float32))


def test_a_writer_whose_cleanup_fails_still_releases_its_lock(store_url: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    store = TeacherStore.create(store_url, SPECS)
    put, remove = store.loc.put, store.loc.remove

    def unreachable(*args: Any) -> None:
        raise OSError("network unreachable")

    def remove_locks_only(path: str) -> None:
        if path.startswith("shards/"):
            unreachable()
        remove(path)

    monkeypatch.setattr(store.loc, "put", unreachable)  # the commit fails ...
    monkeypatch.setattr(store.loc, "remove", remove_locks_only)  # ... and so does removing the attempt
    with pytest.raises(OSError, match="network unreachable"):
        with store.shard_writer(0, owner="run-1") as writer:
            writer.put("a", {"ecapa": np.ones(6, np.float32)})
    monkeypatch.setattr(store.loc, "put", put)
    monkeypatch.setattr(store.loc, "remove", remove)
    assert not store.loc.exists("locks/000000.lock")
    assert not [t for t in threading.enumerate() if t.name == "mt2kd-lock-000000"]  # no heartbeat keeps beating
    with store.shard_writer(0, owner="other-run") as writer:  # a held lock would be ShardLockedError here
        writer.put("a", {"ecapa": np.ones(6, np.float32)})
    assert TeacherStore.open(store_url).cut_ids() == ["a"]


def test_clean_leaves_a_writer_that_starts_while_it_looks_alone(store_url: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import mt2kd.store._verify as verify

    store = TeacherStore.create(store_url, SPECS)
    writer = store.shard_writer(0)
    read_locks = verify._lock_holders

    def writer_starts_meanwhile(s: TeacherStore) -> dict[str, dict[str, Any]]:
        holders = read_locks(s)  # no lock held yet ...
        writer.__enter__()  # ... when a writer takes shard 0 and streams its first chunks
        writer.put("a", {"whisper": np.ones((2000, 32), np.float32)})
        return holders

    monkeypatch.setattr(verify, "_lock_holders", writer_starts_meanwhile)
    assert TeacherStore.open(store_url, mode="a").clean() == []
    monkeypatch.setattr(verify, "_lock_holders", read_locks)
    writer.put("b", {"ecapa": np.ones(6, np.float32)})
    writer.__exit__(None, None, None)
    reopened = TeacherStore.open(store_url)
    assert reopened.get("a")["whisper"].shape == (2000, 32) and reopened.verify() == []


def test_clean_leaves_a_lock_taken_over_after_it_was_found_abandoned(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import socket

    import mt2kd.store._verify as verify

    path = str(tmp_path / "s.zarr")
    store = TeacherStore.create(path, SPECS)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True, timeout=PROCESS_TIMEOUT)
    (tmp_path / "s.zarr" / "locks").mkdir()
    (tmp_path / "s.zarr" / "locks" / "000000.lock").write_text(json.dumps(
        {"host": socket.gethostname(), "pid": int(dead.stdout), "attempt": "0123456789ab", "owner": "",
         "beat": time.time()}))  # a killed writer's lock
    writer = store.shard_writer(0)
    read_locks = verify._lock_holders

    def taken_over_meanwhile(s: TeacherStore) -> dict[str, dict[str, Any]]:
        holders = read_locks(s)  # the dead writer's lock ...
        writer.__enter__()  # ... which a new writer takes over before clean removes it
        return holders

    monkeypatch.setattr(verify, "_lock_holders", taken_over_meanwhile)
    assert TeacherStore.open(path, mode="a").clean() == []
    monkeypatch.setattr(verify, "_lock_holders", read_locks)
    writer.put("a", {"ecapa": np.ones(6, np.float32)})
    writer.__exit__(None, None, None)  # it still holds its lock: it commits
    assert TeacherStore.open(path).cut_ids() == ["a"]


def test_temporary_files_of_a_killed_commit_or_heartbeat_are_leftovers_once_stale(tmp_path: Path) -> None:
    import os

    import mt2kd.store._fs as fs

    path = tmp_path / "s.zarr"
    store = TeacherStore.create(str(path), SPECS)
    with store.shard_writer(0) as writer:
        writer.put("a", {"ecapa": np.ones(6, np.float32)})
    # killed after writing the temporary record of shard 1 (before linking it into place), of shard 0's
    # replacement, and of a lock's heartbeat; and one write still in flight
    (path / "commits" / "000001").mkdir()
    stale = ["commits/000001/.tmp-5f0c", "commits/000000/.tmp-77aa", "locks/.tmp-cafe"]
    (path / "locks").mkdir(exist_ok=True)
    for name in [*stale, "locks/.tmp-young"]:
        (path / name).write_bytes(b'{"partial')
    long_ago = time.time() - fs.LOCK_STALE_SECONDS - 60
    for name in [*stale, "commits/000001"]:
        os.utime(path / name, (long_ago, long_ago))
    store = TeacherStore.open(str(path), mode="a")
    expected = ["locks/.tmp-cafe", "commits/000000/.tmp-77aa", "commits/000001"]
    assert store.leftovers() == expected and store.verify() == []
    assert store.clean() == expected and store.leftovers() == []
    assert sorted(os.listdir(path / "commits")) == ["000000", "zarr.json"]
    assert os.listdir(path / "commits" / "000000") == ["zarr.json"] and os.listdir(path / "locks") == [".tmp-young"]
    assert TeacherStore.open(str(path)).cut_ids() == ["a"]
