"""Shard locks across hosts: a heartbeat tells a dead writer on another node from a live one."""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import numpy as np
import pytest

import mt2kd.store._fs as fs
from mt2kd.errors import ShardCommittedError, ShardLockedError
from mt2kd.store import TeacherSpec, TeacherStore

SPECS = [TeacherSpec("ecapa", "clip", 6)]
LOCK = "locks/000000.lock"
ROW = {"ecapa": np.ones(6, np.float32)}


def other_host_lock(store: TeacherStore, beat: float | None, owner: str = "") -> None:
    holder = {"host": "node-that-died", "pid": 4242, "attempt": "0123456789ab", "owner": owner}
    if beat is not None:
        holder["beat"] = beat
    store.loc.write(LOCK, json.dumps(holder).encode())


def test_holder_alive_asks_the_pid_here_and_the_heartbeat_elsewhere() -> None:
    here = socket.gethostname()
    now = 1_000_000.0
    assert fs.holder_alive({"host": here, "pid": os.getpid()}, now)
    dead_pid = 2 ** 22 + 12345  # above the default pid_max: never a running process
    assert not fs.holder_alive({"host": here, "pid": dead_pid, "beat": now}, now)  # the pid wins here
    assert fs.holder_alive({"host": "node-7", "pid": 1, "beat": now - fs.LOCK_STALE_SECONDS + 1}, now)
    assert not fs.holder_alive({"host": "node-7", "pid": 1, "beat": now - fs.LOCK_STALE_SECONDS - 1}, now)
    assert fs.holder_alive({"host": "node-7", "pid": 1}, now)  # no heartbeat: cannot tell, so alive


def test_holder_alive_here_is_false_once_the_heartbeat_is_stale_even_if_the_pid_runs() -> None:
    """A restarted container keeps its hostname and reuses pids: a dead writer's pid may name a live process."""
    here, now = socket.gethostname(), 1_000_000.0
    assert fs.holder_alive({"host": here, "pid": os.getpid(), "beat": now - fs.LOCK_STALE_SECONDS + 1}, now)
    assert not fs.holder_alive({"host": here, "pid": os.getpid(), "beat": now - fs.LOCK_STALE_SECONDS - 1}, now)
    assert not fs.holder_alive({"host": here, "pid": os.getpid(), "beat": now - 7200}, now)


def test_the_refusal_of_a_live_lock_says_the_heartbeat_rule_holds_on_any_host(store_url: str) -> None:
    store = TeacherStore.create(store_url, SPECS)
    store.loc.write(LOCK, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "attempt": "other",
                                      "beat": time.time()}).encode())
    with pytest.raises(ShardLockedError, match=r"a lock on any host is taken over once it has gone 300 s"):
        with store.shard_writer(0):
            pass


def test_a_live_lock_of_another_host_is_refused_and_a_silent_one_taken_over(store_url: str) -> None:
    store = TeacherStore.create(store_url, SPECS)
    other_host_lock(store, beat=time.time())
    with pytest.raises(ShardLockedError, match=r"pid 4242 on node-that-died .* taken over once it has gone 300 s"):
        with store.shard_writer(0) as writer:
            writer.put("refused", ROW)
    assert json.loads(store.loc.read(LOCK))["host"] == "node-that-died"  # left alone
    other_host_lock(store, beat=time.time() - fs.LOCK_STALE_SECONDS - 5)  # its node was lost 5 min ago
    assert LOCK in store.leftovers()
    with store.shard_writer(0) as writer:
        writer.put("after-takeover", ROW)
    assert TeacherStore.open(store_url).cut_ids() == ["after-takeover"]
    assert not store.loc.exists(LOCK)


def test_clean_removes_a_silent_lock_of_another_host(store_url: str) -> None:
    store = TeacherStore.create(store_url, SPECS)
    other_host_lock(store, beat=time.time() - fs.LOCK_STALE_SECONDS - 5)
    assert LOCK in store.clean()
    assert not store.loc.exists(LOCK)
    other_host_lock(store, beat=time.time())
    assert LOCK not in store.leftovers() and LOCK not in store.clean() and store.loc.exists(LOCK)


def test_a_writer_keeps_its_lock_beating(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fs, "LOCK_BEAT_SECONDS", 0.05)
    store = TeacherStore.create(store_url, SPECS)
    with store.shard_writer(0, owner="run-1") as writer:
        first = json.loads(store.loc.read(LOCK))
        time.sleep(0.4)
        later = json.loads(store.loc.read(LOCK))
        writer.put("cut", ROW)
    assert later["beat"] > first["beat"] + 0.1
    assert later["attempt"] == first["attempt"] == writer.attempt and later["owner"] == "run-1"
    assert not store.loc.exists(LOCK)


def test_an_earlier_attempt_of_the_same_owner_is_waited_for_until_it_is_gone(store_url: str,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """dask reruns the task of a lost worker at once, while the dead attempt's lock still looks fresh."""
    monkeypatch.setattr(fs, "LOCK_BEAT_SECONDS", 0.05)
    monkeypatch.setattr(fs, "LOCK_STALE_SECONDS", 0.6)
    store = TeacherStore.create(store_url, SPECS)
    other_host_lock(store, beat=time.time(), owner="run-a")
    start = time.monotonic()
    with pytest.raises(ShardLockedError, match="node-that-died"):  # another run's writer: refused at once
        store.shard_writer(0, owner="run-b").__enter__()
    assert time.monotonic() - start < 0.4
    with store.shard_writer(0, owner="run-a") as writer:
        writer.put("retried", ROW)
    assert time.monotonic() - start >= 0.5  # waited for the dead attempt's heartbeat to go stale
    assert TeacherStore.open(store_url).cut_ids() == ["retried"]


def test_a_live_attempt_of_the_same_owner_is_waited_for_until_it_commits(store_url: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """dask may run one task twice at once: the second waits, then finds the shard committed."""
    monkeypatch.setattr(fs, "LOCK_BEAT_SECONDS", 0.05)
    store = TeacherStore.create(store_url, SPECS)
    entered = threading.Event()

    def first() -> None:
        with store.shard_writer(0, owner="run-a") as writer:
            writer.put("first", ROW)
            entered.set()
            time.sleep(0.3)

    thread = threading.Thread(target=first)
    thread.start()
    assert entered.wait(10)
    with pytest.raises(ShardCommittedError):
        with store.shard_writer(0, owner="run-a") as writer:
            writer.put("second", ROW)
    thread.join()
    assert TeacherStore.open(store_url).cut_ids() == ["first"]


def this_host_lock(store: TeacherStore, beat: float, owner: str = "") -> None:
    """A lock of this host whose pid is alive (ours: a pid reused after the writer's container restarted)."""
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "attempt": "0123456789ab", "owner": owner,
              "beat": beat}
    store.loc.write(LOCK, json.dumps(holder).encode())


def test_a_lock_here_with_a_live_pid_but_a_stopped_heartbeat_is_a_dead_writers(store_url: str) -> None:
    store = TeacherStore.create(store_url, SPECS)
    this_host_lock(store, beat=time.time() - 7200, owner="run-1")
    assert [w["alive"] for w in store.info()["writers"]] == [False]
    assert LOCK in store.leftovers()
    assert LOCK in store.clean() and not store.loc.exists(LOCK)
    this_host_lock(store, beat=time.time() - 7200, owner="run-1")
    with store.shard_writer(0, owner="run-2") as writer:  # another run: takes it over instead of refusing
        writer.put("after-takeover", ROW)
    assert TeacherStore.open(store_url).cut_ids() == ["after-takeover"]
    this_host_lock(store, beat=time.time(), owner="run-1")  # a live writer here beats: still refused
    with pytest.raises(ShardLockedError):
        with store.shard_writer(0, replace=True, owner="run-2") as writer:
            writer.put("refused", ROW)


def test_a_retry_waits_for_its_earlier_attempt_here_only_until_the_heartbeat_stops(
        store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fs, "LOCK_BEAT_SECONDS", 0.05)
    monkeypatch.setattr(fs, "LOCK_STALE_SECONDS", 0.6)
    store = TeacherStore.create(store_url, SPECS)
    this_host_lock(store, beat=time.time(), owner="run-a")
    start = time.monotonic()
    waited: list[float] = []

    def retry() -> None:
        with store.shard_writer(0, owner="run-a") as writer:
            writer.put("retried", ROW)
        waited.append(time.monotonic() - start)

    thread = threading.Thread(target=retry, daemon=True)
    thread.start()
    thread.join(10)
    try:
        assert waited and waited[0] >= 0.5  # taken over once the heartbeat was 0.6 s old
    finally:
        if thread.is_alive():  # still waiting: let it go
            store.loc.remove(LOCK)
            thread.join(10)
    assert TeacherStore.open(store_url).cut_ids() == ["retried"]
