"""A store opened (and read) in the parent works inside forked torch DataLoader workers."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.utils.data

from mt2kd.store import TeacherStore


class CutDataset(torch.utils.data.Dataset):
    """Item i: the whisper frames of cut i, read from a store the parent opened."""

    def __init__(self, store: TeacherStore, cut_ids: list[str]) -> None:
        self.store, self.cut_ids = store, cut_ids

    def __len__(self) -> int:
        return len(self.cut_ids)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, int, int]:
        import os

        got = self.store.get_many([self.cut_ids[index]], teachers=["whisper"])[0]["whisper"]
        return index, torch.from_numpy(got.astype(np.float32)), os.getpid(), self.store._reader.num_threads


def test_forked_dataloader_workers_read_a_store_opened_in_the_parent(store_url: str, specs_of: Any,
                                                                     outputs_of: Any) -> None:
    outputs = outputs_of([f"cut-{i}" for i in range(12)], seed=11)
    store = TeacherStore.create(store_url, specs_of())
    for shard in range(3):
        with store.shard_writer(shard) as writer:
            for cut_id in list(outputs)[shard * 4:(shard + 1) * 4]:
                writer.put(cut_id, outputs[cut_id])
    parent = TeacherStore.open(store_url)
    parent.get_many(list(outputs))  # the parent has open file handles and a running thread pool
    loader = torch.utils.data.DataLoader(CutDataset(parent, list(outputs)), batch_size=None, num_workers=2,
                                         multiprocessing_context="fork")
    seen, pids = set(), set()
    for index, frames, pid, num_threads in loader:
        # the two workers share the cores instead of each starting a full decoding pool
        assert int(num_threads) == max(1, min(4, (os.cpu_count() or 1) // 2))
        cut_id = list(outputs)[int(index)]
        np.testing.assert_array_equal(frames.numpy(), outputs[cut_id]["whisper"].astype(np.float16))
        seen.add(cut_id)
        pids.add(int(pid))
    assert seen == set(outputs) and len(pids) == 2
    assert parent.get("cut-0")["whisper"].shape == outputs["cut-0"]["whisper"].shape  # the parent still reads


def test_a_store_pickles_as_its_location(tmp_path: Any, specs_of: Any, outputs_of: Any) -> None:
    """What spawn-started workers receive: the store reopens itself from its path."""
    import pickle

    outputs = outputs_of(["a", "b"], seed=12)
    store = TeacherStore.create(str(tmp_path / "s.zarr"), specs_of())
    with store.shard_writer(0) as writer:
        for cut_id, arrays in outputs.items():
            writer.put(cut_id, arrays)
    parent = TeacherStore.open(str(tmp_path / "s.zarr"))
    parent.get("a")
    copy = pickle.loads(pickle.dumps(parent))
    assert copy.mode == "r" and copy.cut_ids() == ["a", "b"]
    np.testing.assert_array_equal(copy.get("b")["ecapa"], outputs["b"]["ecapa"])


_FORKED_FROM: TeacherStore | None = None  # the parent's store, inherited by a forked child


def _child_reads(results: Any) -> None:
    assert _FORKED_FROM is not None
    got = _FORKED_FROM.get("long")["whisper"]
    reader = _FORKED_FROM._reader
    results.put((got.tobytes(), reader._pool is not None and reader._pid == os.getpid()))


def test_a_child_forked_while_the_parent_has_helper_threads_rebuilds_them(tmp_path: Any) -> None:
    """The parent decodes a long cut on two threads; a forked child does the same with its own pool."""
    import multiprocessing

    from mt2kd.store import TeacherSpec
    from mt2kd.store._reader import ChunkReader

    global _FORKED_FROM
    rows = np.random.default_rng(5).standard_normal((600, 2048)).astype(np.float32)  # ~2.3 MiB, incompressible
    store = TeacherStore.create(str(tmp_path / "s.zarr"), [TeacherSpec("whisper", "frames", 2048, frame_rate=25.0)])
    with store.shard_writer(0) as writer:
        writer.put("long", {"whisper": rows})
    parent = TeacherStore.open(str(tmp_path / "s.zarr"))
    parent._reader = ChunkReader(parent.loc, parent.specs, num_threads=2)
    np.testing.assert_array_equal(parent.get("long")["whisper"], rows.astype(np.float16))
    assert parent._reader._pool is not None  # the read was split: the parent has a live helper thread
    _FORKED_FROM = parent
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_child_reads, args=(results,))
    child.start()
    data, own_pool = results.get(timeout=60)
    child.join(timeout=60)
    _FORKED_FROM = None
    assert child.exitcode == 0 and own_pool
    assert data == rows.astype(np.float16).tobytes()


def _open_files_under(folder: str) -> int:
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{name}").startswith(folder + os.sep)
        except OSError:
            continue  # the descriptor os.listdir used, closed by now
    return count


def _child_counts_files(folder: str, results: Any) -> None:
    assert _FORKED_FROM is not None
    inherited = _open_files_under(folder)
    got = _FORKED_FROM.get_many(_FORKED_FROM.cut_ids())
    after_reading = _open_files_under(folder)
    grandchild = os.fork()  # a worker that forks again (its maps' lock must not stay taken)
    if grandchild == 0:
        os._exit(0 if _FORKED_FROM.get("cut-0") else 1)
    grandchild_ok = os.waitpid(grandchild, 0)[1] == 0
    results.put((inherited, after_reading, [g["whisper"].tobytes() for g in got], grandchild_ok))


def test_a_forked_child_closes_the_files_the_parent_had_open(tmp_path: Any, specs_of: Any, outputs_of: Any) -> None:
    """The child has none of the parent's maps open, and reading every cut opens only its own."""
    import multiprocessing

    global _FORKED_FROM
    if not os.path.isdir("/proc/self/fd"):
        import pytest

        pytest.skip("counts descriptors in /proc/self/fd")
    outputs = outputs_of([f"cut-{i}" for i in range(4)], seed=13)
    store = TeacherStore.create(str(tmp_path / "s.zarr"), specs_of())
    for shard, cut_id in enumerate(outputs):
        with store.shard_writer(shard) as writer:
            writer.put(cut_id, outputs[cut_id])
    parent = TeacherStore.open(str(tmp_path / "s.zarr"))
    parent.get_many(list(outputs))
    assert _open_files_under(str(tmp_path)) == 12  # 4 shards x 3 teachers, one map each
    _FORKED_FROM = parent
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_child_counts_files, args=(str(tmp_path), results))
    child.start()
    try:
        inherited, after_reading, frames, grandchild_ok = results.get(timeout=60)
        child.join(timeout=60)
    finally:
        child.kill()
        _FORKED_FROM = None
    assert child.exitcode == 0 and grandchild_ok
    assert inherited == 0 and after_reading == 12
    assert frames == [o["whisper"].astype(np.float16).tobytes() for o in outputs.values()]
    assert _open_files_under(str(tmp_path)) == 12  # the parent keeps its own
