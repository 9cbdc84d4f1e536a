"""One shard task without a cluster: the write-behind thread keeps order, bounds memory, and fails loudly."""

from __future__ import annotations

import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest

from mt2kd.cuts import SAMPLE_RATE
from mt2kd.extract import _shard
from mt2kd.extract._plan import ShardTask
from mt2kd.extract._shard import COMMITTED, LOCKED, ShardSettings, WriteBehind, write_shard
from mt2kd.store import TeacherSpec, TeacherStore


def test_write_behind_runs_calls_in_order_on_one_thread() -> None:
    seen: list[tuple[int, str]] = []

    def call(i: int) -> int:
        time.sleep(0.001 * (i % 3))  # uneven durations: order must not depend on them
        seen.append((i, threading.current_thread().name))
        return i * 10

    with WriteBehind(depth=2) as behind:
        for i in range(12):
            behind.submit(call, i)
        results = behind.results()
    assert results == [i * 10 for i in range(12)]
    assert [i for i, _ in seen] == list(range(12))
    assert len({name for _, name in seen}) == 1 and seen[0][1] != threading.current_thread().name


def test_write_behind_bounds_the_queue() -> None:
    release = threading.Event()
    started = threading.Event()

    def slow(i: int) -> int:
        started.set()
        release.wait(5)
        return i

    blocked = threading.Event()
    with WriteBehind(depth=2) as behind:
        def producer() -> None:
            for i in range(3):
                behind.submit(slow, i)
            blocked.set()  # reached only once the first call has finished

        thread = threading.Thread(target=producer)
        thread.start()
        assert started.wait(5)
        time.sleep(0.05)
        assert not blocked.is_set(), "a third call was queued while two were pending"
        release.set()
        thread.join(5)
        assert blocked.is_set()
        assert behind.results() == [0, 1, 2]


def test_write_behind_raises_the_first_failure() -> None:
    def call(i: int) -> int:
        if i == 1:
            raise ValueError("disk full on call 1")
        return i

    with pytest.raises(ValueError, match="call 1"):
        with WriteBehind(depth=1) as behind:
            for i in range(5):
                behind.submit(call, i)
            behind.results()


class EchoTeacher:
    """A stand-in teacher whose output is a function of the cut's samples (tests the task, not a model)."""

    name = "echo"

    def extract(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        return [np.full(4, float(w.size), np.float32) if w.size != 1600 else np.full(4, np.nan, np.float32)
                for w in waves]


def write_corpus(folder: Path, lengths: list[int], seed: int = 0) -> tuple[dict[str, np.ndarray], list[dict]]:
    """WAV files of noise and their cut dicts, one cut per file."""
    import soundfile

    rng = np.random.default_rng(seed)
    folder.mkdir()
    audio = {f"cut-{i}": (rng.standard_normal(n) * 0.1).astype(np.float32) for i, n in enumerate(lengths)}
    cuts = []
    for cut_id, samples in audio.items():
        soundfile.write(folder / f"{cut_id}.wav", samples, SAMPLE_RATE, subtype="FLOAT")
        duration = samples.size / SAMPLE_RATE
        cuts.append({"id": cut_id, "start": 0.0, "duration": duration, "channel": 0, "type": "MonoCut",
                     "recording": {"id": cut_id, "sampling_rate": SAMPLE_RATE, "num_samples": samples.size,
                                   "duration": duration, "channel_ids": [0],
                                   "sources": [{"type": "file", "channels": [0],
                                                "source": str(folder / f"{cut_id}.wav")}]}})
    return audio, cuts


def test_write_shard_puts_every_cut_and_records_failures(tmp_path: Path) -> None:
    lengths = [int(n) for n in np.random.default_rng(1).integers(2000, 40_000, size=25)] + [1600]  # last: NaN
    audio, cuts = write_corpus(tmp_path / "wav", lengths)
    store_path = tmp_path / "store"
    TeacherStore.create(store_path, [TeacherSpec(name="echo", kind="clip", dim=4, dtype="float32")])
    task = ShardTask.of(0, tuple(cuts))
    settings = ShardSettings(str(store_path), max_duration=3.0, decode_threads=2, prefetch_cuts=4)
    result = write_shard(task, settings, {"echo": EchoTeacher()})  # type: ignore[dict-item]
    assert result.status == COMMITTED
    assert result.num_cuts == len(cuts) - 1
    # its one teacher failed it: a whole-cut failure (teacher None), as verify expects, naming the teacher
    assert [(c, t) for c, t, _ in result.failures] == [("cut-25", None)]
    assert result.failures[0][2] == "no teacher output: echo: non-finite output: 4 NaN/Inf values"
    store = TeacherStore.open(store_path)
    assert sorted(store.cut_ids()) == sorted(set(audio) - {"cut-25"})
    for cut_id in store.cut_ids():
        np.testing.assert_array_equal(store.get(cut_id)["echo"], np.full(4, audio[cut_id].size, np.float32))
    assert [f["cut_id"] for f in store.failures()] == ["cut-25"]


def test_a_rerun_task_waits_out_the_lock_its_first_attempt_left_on_a_lost_node(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import time

    import mt2kd.store._fs as fs

    monkeypatch.setattr(fs, "LOCK_BEAT_SECONDS", 0.05)
    monkeypatch.setattr(fs, "LOCK_STALE_SECONDS", 0.5)
    _, cuts = write_corpus(tmp_path / "wav", [8000] * 3)
    store = TeacherStore.create(tmp_path / "store", [TeacherSpec(name="echo", kind="clip", dim=4, dtype="float32")])
    task = ShardTask.of(0, tuple(cuts))
    dead = {"host": "gpu-node-17", "pid": 311, "attempt": "first", "owner": "run-1", "beat": time.time()}
    store.loc.write("locks/000000.lock", json.dumps(dead).encode())  # its worker died with the node just now
    other_run = ShardSettings(str(tmp_path / "store"), 3.0, 1, 4, owner="run-2")
    assert write_shard(task, other_run, {"echo": EchoTeacher()}).status == LOCKED  # type: ignore[dict-item]
    started = time.monotonic()
    same_run = ShardSettings(str(tmp_path / "store"), 3.0, 1, 4, owner="run-1")
    result = write_shard(task, same_run, {"echo": EchoTeacher()})  # type: ignore[dict-item]
    assert result.status == COMMITTED and result.num_cuts == 3
    assert time.monotonic() - started >= 0.3  # it waited for the dead attempt's heartbeat to go stale
    assert sorted(TeacherStore.open(tmp_path / "store").cut_ids()) == ["cut-0", "cut-1", "cut-2"]


class Activations:
    """Stands for a forward's tensors on the device."""


class MemoryHungryTeacher:
    """Runs out of memory on batches of several cuts; one cut fits only once the failed batch's memory is back."""

    name = "hungry"

    def __init__(self) -> None:
        self.last: weakref.ref[Activations] | None = None

    def extract(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        if self.last is not None and self.last() is not None:
            raise RuntimeError("out of memory: the failed batch's activations are still held")
        activations = Activations()
        self.last = weakref.ref(activations)
        if len(waves) > 1:
            raise RuntimeError("out of memory: a batch this size does not fit")
        return [np.full(4, float(w.size), np.float32) for w in waves]


def test_a_batch_that_runs_out_of_memory_is_retried_cut_by_cut_with_its_memory_back() -> None:
    from mt2kd.extract._audio import CutAudio
    from mt2kd.extract._shard import run_teacher

    batch = [CutAudio(f"cut-{n}", n / SAMPLE_RATE, np.zeros(n, np.float32)) for n in (16_000, 8_000, 4_000)]
    outputs = run_teacher(MemoryHungryTeacher(), batch)  # type: ignore[arg-type]
    assert [o if isinstance(o, str) else o.tolist() for o in outputs] == [[16_000.0] * 4, [8_000.0] * 4,
                                                                           [4_000.0] * 4]


def test_write_shard_writer_crash_commits_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    audio, cuts = write_corpus(tmp_path / "wav", [8000] * 12)
    store_path = tmp_path / "store"
    TeacherStore.create(store_path, [TeacherSpec(name="echo", kind="clip", dim=4, dtype="float32")])
    task = ShardTask.of(2, tuple(cuts))
    settings = ShardSettings(str(store_path), max_duration=1.0, decode_threads=2, prefetch_cuts=4)
    real_put_cut = _shard.put_cut
    calls = []

    def failing_put_cut(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 5:
            raise OSError("no space left on device (simulated)")
        return real_put_cut(*args, **kwargs)

    monkeypatch.setattr(_shard, "put_cut", failing_put_cut)
    with pytest.raises(OSError, match="no space left"):
        write_shard(task, settings, {"echo": EchoTeacher()})  # type: ignore[dict-item]
    store = TeacherStore.open(store_path)
    assert len(store) == 0 and not store.failures()
    monkeypatch.setattr(_shard, "put_cut", real_put_cut)
    assert write_shard(task, settings, {"echo": EchoTeacher()}).status == COMMITTED  # type: ignore[dict-item]
    assert len(TeacherStore.open(store_path)) == len(audio)


def test_write_shard_records_an_output_the_store_refuses(tmp_path: Path) -> None:
    store_path = tmp_path / "store"
    TeacherStore.create(store_path, [TeacherSpec(name="echo", kind="clip", dim=3, dtype="float32")])  # not 4
    folder = tmp_path / "wav"
    folder.mkdir()
    import soundfile

    soundfile.write(folder / "a.wav", np.zeros(8000, np.float32) + 0.01, SAMPLE_RATE)
    cut = {"id": "a", "start": 0.0, "duration": 0.5, "channel": 0, "type": "MonoCut",
           "recording": {"id": "a", "sampling_rate": SAMPLE_RATE, "num_samples": 8000, "duration": 0.5,
                         "channel_ids": [0], "sources": [{"type": "file", "channels": [0],
                                                          "source": str(folder / "a.wav")}]}}
    task = ShardTask.of(3, (cut,))
    result = write_shard(task, ShardSettings(str(store_path), 3.0, 1, 2), {"echo": EchoTeacher()})  # type: ignore[dict-item]
    # a shape the store refuses is recorded as the cut's failure; the shard still commits, empty
    assert result.num_cuts == 0 and result.failures and "refused by the store" in result.failures[0][2]
    assert "a" not in TeacherStore.open(store_path)


def test_decoding_leaves_the_cut_dicts_intact(tmp_path: Path) -> None:
    """A task that dask runs twice in one worker decodes the same cut dicts again."""
    import copy

    from mt2kd.extract._audio import CutAudio, load_cut_audio

    _, cuts = write_corpus(tmp_path / "wav", [4000, 6000])
    before = copy.deepcopy(cuts)
    for _ in range(2):
        assert all(isinstance(load_cut_audio(cut), CutAudio) for cut in cuts)
    assert cuts == before


def _shard_with(tmp_path: Path, num_cuts: int) -> tuple[ShardTask, ShardSettings]:
    _, cuts = write_corpus(tmp_path / "wav", [8000] * num_cuts)
    store_path = tmp_path / "store"
    TeacherStore.create(store_path, [TeacherSpec(name="echo", kind="clip", dim=4, dtype="float32")])
    task = ShardTask.of(0, tuple(cuts))
    return task, ShardSettings(str(store_path), max_duration=1.0, decode_threads=1, prefetch_cuts=2)


def test_slow_decoding_shows_as_decode_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mt2kd.extract import _audio

    task, settings = _shard_with(tmp_path, 8)
    real = _audio.load_cut_audio

    def slow_decode(data: dict) -> object:  # type: ignore[type-arg]
        time.sleep(0.05)
        return real(data)

    monkeypatch.setattr(_audio, "load_cut_audio", slow_decode)
    result = write_shard(task, settings, {"echo": EchoTeacher()})  # type: ignore[dict-item]
    assert result.status == COMMITTED and result.num_cuts == 8
    waits = result.waits
    assert waits.decode >= 0.2  # 8 decodes of 50 ms on one thread, the teacher takes ~0
    assert waits.decode > 0.5 * result.seconds and waits.write < waits.decode
    assert 0.04 <= waits.first_batch < waits.decode  # the first batch waited for its own decode, not for all


def test_slow_writing_shows_as_write_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    task, settings = _shard_with(tmp_path, 8)
    real = _shard.write_batch

    def slow_write(*args: object) -> int:
        time.sleep(0.1)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(_shard, "write_batch", slow_write)
    result = write_shard(task, settings, {"echo": EchoTeacher()})  # type: ignore[dict-item]
    assert result.status == COMMITTED and result.num_cuts == 8
    assert result.waits.write >= 0.3  # 4 batches of 2 cuts, 100 ms each, at most 2 queued
    assert result.waits.write > result.waits.decode and result.waits.write <= result.seconds


def test_summary_line_says_where_the_teachers_waited() -> None:
    from mt2kd.extract._progress import ExtractSummary

    def summary(decode: float, first: float) -> str:
        return ExtractSummary(store="s", num_cuts=8, num_shards=1, num_shards_skipped=0, num_shards_written=1,
                              num_failures=0, audio_hours=0.1, seconds=20.0, task_seconds=10.0, decode_wait=decode,
                              first_batch_wait=first, write_wait=0.1).line()

    assert ("waited 25.0% of task time for decoding (5.0% for first batches; raise --decode-threads), "
            "1.0% for writing -> s") in summary(2.5, 0.5)
    # waits for the first batches only (short shards, fast teachers): more decoding threads would not help
    assert "waited 25.0% of task time for decoding (20.0% for first batches), 1.0%" in summary(2.5, 2.0)
    quiet = ExtractSummary(store="s", num_cuts=8, num_shards=1, num_shards_skipped=1, num_shards_written=0,
                           num_failures=0, audio_hours=0.1, seconds=2.0)
    assert "waited" not in quiet.line()  # nothing written, nothing to say


def test_a_workers_tasks_share_one_open_store_for_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each task commits through the store its worker opened once; the index grows shard by shard."""
    import types

    import distributed

    from mt2kd.extract._plugin import PLUGIN_NAME, TeacherPlugin, worker_store

    audio, cuts = write_corpus(tmp_path / "wav", [8000] * 6)
    store_path = tmp_path / "store"
    TeacherStore.create(store_path, [TeacherSpec(name="echo", kind="clip", dim=4, dtype="float32")])
    plugin = TeacherPlugin((), "fp32", "cpu", 1)
    plugin.teachers = {"echo": EchoTeacher()}  # type: ignore[dict-item]
    monkeypatch.setattr(distributed, "get_worker", lambda: types.SimpleNamespace(plugins={PLUGIN_NAME: plugin}))
    settings = ShardSettings(str(store_path), max_duration=1.0, decode_threads=1, prefetch_cuts=2)
    tasks = [ShardTask.of(i, cuts[3 * i:3 * i + 3]) for i in range(2)]
    assert [_shard.run_shard(t, settings).status for t in tasks] == [COMMITTED, COMMITTED]
    shared = worker_store(str(store_path))
    assert list(plugin.stores.values()) == [shared]  # opened once, by the first task
    assert shared.is_committed(0) and shared.is_committed(1) and sorted(shared.cut_ids()) == sorted(audio)
    plugin.teardown(None)  # type: ignore[arg-type]
    assert not plugin.stores


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_decoded_audio_is_one_channel_and_any_non_finite_sample_fails_the_cut(tmp_path: Path, bad: float) -> None:
    import soundfile as sf

    from mt2kd.extract._audio import CutAudio, CutFailure, load_cut_audio
    from mt2kd.tests.extract._corpus import cut, tone

    stereo = np.stack([tone(0.5, seed=1), tone(0.5, freq=880, seed=2)], axis=1)
    sf.write(tmp_path / "stereo.wav", stereo, 16_000, subtype="FLOAT")
    both = load_cut_audio(cut("stereo", tmp_path / "stereo.wav", 16_000, stereo.shape[0], num_channels=2))
    assert isinstance(both, CutAudio)
    np.testing.assert_allclose(both.samples, stereo.mean(axis=1), atol=1e-7)
    sf.write(tmp_path / "mono.wav", stereo[:, 0], 16_000, subtype="FLOAT")
    mono = load_cut_audio(cut("mono", tmp_path / "mono.wav", 16_000, stereo.shape[0]))
    assert isinstance(mono, CutAudio) and mono.samples.flags.c_contiguous and mono.samples.ndim == 1
    np.testing.assert_array_equal(mono.samples, stereo[:, 0])
    broken = stereo[:, 0].copy()
    broken[[10, 4000]] = bad
    sf.write(tmp_path / "bad.wav", broken, 16_000, subtype="FLOAT")
    failed = load_cut_audio(cut("bad", tmp_path / "bad.wav", 16_000, broken.size))
    assert isinstance(failed, CutFailure) and failed.reason == "non-finite samples: 2 NaN/Inf values"


def test_a_shard_with_a_cut_neither_stored_nor_recorded_as_failed_refuses_to_commit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mt2kd.errors import StoreError

    task, settings = _shard_with(tmp_path, 6)
    real_put_cut = _shard.put_cut

    def losing_put_cut(writer, cut, outputs, failures):  # type: ignore[no-untyped-def]
        return 0 if cut.cut_id == "cut-3" else real_put_cut(writer, cut, outputs, failures)  # dropped, unrecorded

    monkeypatch.setattr(_shard, "put_cut", losing_put_cut)
    with pytest.raises(StoreError, match=r"shard 0 .*6 cuts.*'cut-3'"):
        write_shard(task, settings, {"echo": EchoTeacher()})  # type: ignore[dict-item]
    store = TeacherStore.open(settings.store_url)
    assert not store.is_committed(0) and len(store) == 0 and store.leftovers() == []  # the attempt is discarded
    monkeypatch.setattr(_shard, "put_cut", real_put_cut)
    assert write_shard(task, settings, {"echo": EchoTeacher()}).status == COMMITTED  # type: ignore[dict-item]
    assert len(TeacherStore.open(settings.store_url)) == 6


def test_a_plugin_torn_down_mid_shard_leaves_the_running_task_its_teachers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A closing worker removes its plugins before it waits for the task it runs (Ctrl-C, --max-failures)."""
    import types

    import distributed

    from mt2kd.extract._plugin import PLUGIN_NAME, TeacherPlugin

    task, settings = _shard_with(tmp_path, 8)  # 4 batches of 2 cuts
    plugin = TeacherPlugin((), "fp32", "cpu", 1)
    plugin.teachers = {"echo": EchoTeacher()}  # type: ignore[dict-item]
    monkeypatch.setattr(distributed, "get_worker", lambda: types.SimpleNamespace(plugins={PLUGIN_NAME: plugin}))
    real_batches = _shard.batches

    def batches_then_teardown(*args: object) -> object:
        for i, batch in enumerate(real_batches(*args)):  # type: ignore[arg-type]
            if i == 1:
                plugin.teardown(None)  # type: ignore[arg-type]
            yield batch

    monkeypatch.setattr(_shard, "batches", batches_then_teardown)
    result = _shard.run_shard(task, settings)
    assert result.status == COMMITTED and result.num_cuts == 8 and not result.failures
    assert sorted(TeacherStore.open(settings.store_url).cut_ids()) == sorted(task.cut_ids)
    assert not plugin.teachers and not plugin.stores  # the worker's own references are let go all the same


class ConstantTeacher:
    """A stand-in teacher giving each cut the same clip output (``value`` in every position)."""

    def __init__(self, name: str, value: float) -> None:
        self.name, self.value = name, value

    def extract(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        return [np.full(4, self.value, np.float32) for _ in waves]


def test_an_output_the_store_refuses_fails_that_teacher_only(tmp_path: Path) -> None:
    _, cuts = write_corpus(tmp_path / "wav", [8000] * 3)
    store_path = tmp_path / "store"
    TeacherStore.create(store_path, [TeacherSpec(name="big", kind="clip", dim=4, dtype="float16"),
                                     TeacherSpec(name="echo", kind="clip", dim=4, dtype="float32")])
    teachers = {"big": ConstantTeacher("big", 70_000.0), "echo": EchoTeacher()}  # beyond float16's range
    settings = ShardSettings(str(store_path), 3.0, 1, 2)
    result = write_shard(ShardTask.of(0, tuple(cuts)), settings, teachers)  # type: ignore[arg-type]
    assert result.status == COMMITTED and result.num_cuts == 3
    assert sorted((c, t) for c, t, _ in result.failures) == [("cut-0", "big"), ("cut-1", "big"), ("cut-2", "big")]
    store = TeacherStore.open(store_path)
    for cut_id in ("cut-0", "cut-1", "cut-2"):
        assert set(store.get(cut_id)) == {"echo"}  # the other teacher's output is kept
        np.testing.assert_array_equal(store.get(cut_id)["echo"], np.full(4, 8000.0, np.float32))
    assert all(f["teacher"] == "big" and f["reason"].startswith("output refused by the store: ")
               and "float16" in f["reason"] for f in store.failures())
    assert store.verify({c["id"]: c["duration"] for c in cuts}) == []


def test_a_cut_every_teacher_failed_is_a_whole_cut_failure_naming_each_reason(tmp_path: Path) -> None:
    _, cuts = write_corpus(tmp_path / "wav", [8000, 1600])  # echo: NaN on the 1600-sample cut
    store_path = tmp_path / "store"
    TeacherStore.create(store_path, [TeacherSpec(name="big", kind="clip", dim=4, dtype="float16"),
                                     TeacherSpec(name="echo", kind="clip", dim=4, dtype="float32")])
    teachers = {"big": ConstantTeacher("big", 70_000.0), "echo": EchoTeacher()}
    settings = ShardSettings(str(store_path), 3.0, 1, 2)
    result = write_shard(ShardTask.of(0, tuple(cuts)), settings, teachers)  # type: ignore[arg-type]
    assert result.status == COMMITTED and result.num_cuts == 1
    failures = {(c, t): reason for c, t, reason in result.failures}
    assert set(failures) == {("cut-0", "big"), ("cut-1", None)}
    assert failures[("cut-1", None)].startswith("no teacher output: big: output refused by the store: ")
    assert "; echo: non-finite output: 4 NaN/Inf values" in failures[("cut-1", None)]
    store = TeacherStore.open(store_path)
    assert "cut-1" not in store and [f["teacher"] for f in store.failures() if f["cut_id"] == "cut-1"] == [None]
    failed = {f["cut_id"] for f in store.failures() if f["teacher"] is None}  # what verify leaves out (workflows)
    assert store.verify({c["id"]: c["duration"] for c in cuts if c["id"] not in failed}) == []


def test_a_shard_run_without_teachers_refuses_to_commit(tmp_path: Path) -> None:
    """No teacher output is the task's fault, not the cuts': nothing is recorded against them."""
    from mt2kd.errors import StoreError

    task, settings = _shard_with(tmp_path, 2)
    with pytest.raises(StoreError, match="shard 0 must have each of its 2 cuts"):
        write_shard(task, settings, {})
    assert not TeacherStore.open(settings.store_url).is_committed(0)
