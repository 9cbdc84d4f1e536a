"""The store contract: every backend (local folder, fsspec memory://) must pass all of it."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mt2kd.errors import (
    ConfigError,
    CutNotFoundError,
    DuplicateCutError,
    ShardCommittedError,
    ShardLockedError,
    StoreError,
    StoreNotFoundError,
    ValidationError,
)
from mt2kd.store import TeacherSpec, TeacherStore

WEIRD_IDS = [
    "spk1/ch2/utt3",  # slashes
    "../../etc/passwd",  # path traversal
    "with spaces  and\ttab",
    "ünïcödé-语音-🎙",
    "x" * 300,  # long
    ".",
    "c/0/0",  # looks like a zarr chunk key
    "zarr.json",
]


def write(store: TeacherStore, outputs: dict[str, dict[str, np.ndarray]], cuts_per_shard: int = 3) -> None:
    cut_ids = list(outputs)
    for shard, start in enumerate(range(0, len(cut_ids), cuts_per_shard)):
        with store.shard_writer(shard) as writer:
            for cut_id in cut_ids[start:start + cuts_per_shard]:
                writer.put(cut_id, outputs[cut_id])


def assert_same(got: dict[str, np.ndarray], expected: dict[str, np.ndarray], specs: dict[str, TeacherSpec]) -> None:
    assert list(got) == [t for t in specs if t in expected]
    for teacher, array in expected.items():
        assert got[teacher].dtype == np.dtype(specs[teacher].dtype)
        np.testing.assert_array_equal(got[teacher], array.astype(specs[teacher].dtype))


# ---------------------------------------------------------------- round trips


def test_float32_round_trip_is_exact(store_url: str, specs_of: Any, outputs_of: Any) -> None:
    outputs = outputs_of([f"cut-{i}" for i in range(10)])
    write(TeacherStore.create(store_url, specs_of("float32")), outputs)
    store = TeacherStore.open(store_url)
    assert len(store) == 10 and store.cut_ids() == list(outputs)
    for cut_id, expected in outputs.items():
        got = store.get(cut_id)
        for teacher, array in expected.items():
            assert got[teacher].dtype == np.float32 and got[teacher].shape == array.shape
            np.testing.assert_array_equal(got[teacher], array)


def test_float16_frames_lose_only_rounding(store_url: str, specs_of: Any, outputs_of: Any) -> None:
    outputs = outputs_of([f"cut-{i}" for i in range(6)], seed=1)
    write(TeacherStore.create(store_url, specs_of()), outputs)
    store = TeacherStore.open(store_url)
    assert store.specs["whisper"].dtype == "float16" and store.specs["beats"].dtype == "float32"
    for cut_id, expected in outputs.items():
        got = store.get(cut_id)
        frames = expected["whisper"]
        assert got["whisper"].dtype == np.float16
        np.testing.assert_array_equal(got["whisper"], frames.astype(np.float16))
        # float16 keeps 11 significant bits: relative error at most 2^-11
        np.testing.assert_allclose(got["whisper"].astype(np.float32), frames, rtol=2.0**-11, atol=2.0**-24)
        np.testing.assert_array_equal(got["beats"], expected["beats"])


def test_every_codec_round_trips(store_url: str, outputs_of: Any) -> None:
    specs = [TeacherSpec(f"w{i}", "frames", 16, frame_rate=25.0, dtype="float32", codec=codec)
             for i, codec in enumerate(("blosc-lz4", "blosc-zstd", "zstd", "none"))]
    outputs = {c: {s.name: o["whisper"] for s in specs} for c, o in outputs_of(["a", "b", "c"]).items()}
    write(TeacherStore.create(store_url, specs), outputs, cuts_per_shard=2)
    store = TeacherStore.open(store_url)
    for cut_id, expected in outputs.items():
        assert_same(store.get(cut_id), expected, store.specs)


def test_weird_cut_ids_are_data_not_paths(store_url: str, specs_of: Any, outputs_of: Any) -> None:
    outputs = outputs_of(WEIRD_IDS, seed=2)
    write(TeacherStore.create(store_url, specs_of()), outputs)
    store = TeacherStore.open(store_url)
    assert store.cut_ids() == WEIRD_IDS
    for cut_id in WEIRD_IDS:
        assert cut_id in store
        assert_same(store.get(cut_id), outputs[cut_id], store.specs)
    assert "spk1" not in store and "x" * 299 not in store


def test_get_many_keeps_order_and_filters_teachers(store_url: str, specs_of: Any, outputs_of: Any) -> None:
    outputs = outputs_of([f"cut-{i}" for i in range(12)], seed=3)
    write(TeacherStore.create(store_url, specs_of()), outputs, cuts_per_shard=5)
    store = TeacherStore.open(store_url)
    order = list(np.random.default_rng(0).permutation(list(outputs)))
    order.append(order[0])  # a repeated ID is read twice
    for got, cut_id in zip(store.get_many(order), order):
        assert_same(got, outputs[cut_id], store.specs)
    only = store.get_many(order, teachers=["ecapa", "whisper"])
    assert [list(g) for g in only] == [["ecapa", "whisper"]] * len(order)
    for got, cut_id in zip(only, order):
        np.testing.assert_array_equal(got["ecapa"], outputs[cut_id]["ecapa"])
    assert store.get_many([]) == []


def test_cuts_may_lack_some_teachers(store_url: str, specs_of: Any, outputs_of: Any) -> None:
    outputs = outputs_of(["full", "no-beats", "whisper-only", "clip-only"], seed=4)
    del outputs["no-beats"]["beats"]
    del outputs["whisper-only"]["beats"], outputs["whisper-only"]["ecapa"]
    del outputs["clip-only"]["whisper"]
    store = TeacherStore.create(store_url, specs_of())
    with store.shard_writer(0) as writer:
        for cut_id, arrays in outputs.items():
            writer.put(cut_id, arrays)
        writer.record_failure("no-beats", "beats produced NaN", teacher="beats")
    reopened = TeacherStore.open(store_url)
    for cut_id, expected in outputs.items():
        assert_same(reopened.get(cut_id), expected, reopened.specs)
    assert reopened.info()["teachers"]["beats"]["num_cuts"] == 2


def test_failures_are_recorded_with_reasons(store_url: str, specs_of: Any, outputs_of: Any) -> None:
    store = TeacherStore.create(store_url, specs_of(), attrs={"random_teachers": True})
    with store.shard_writer(3) as writer:
        writer.put("ok", outputs_of(["ok"])["ok"])
        writer.record_failure("missing-audio", "FileNotFoundError: /audio/1.flac")
        writer.record_failure("ok", "ecapa: too short", teacher="ecapa")
    reopened = TeacherStore.open(store_url)
    assert reopened.failures() == [
        {"cut_id": "missing-audio", "teacher": None, "reason": "FileNotFoundError: /audio/1.flac", "shard": "000003"},
        {"cut_id": "ok", "teacher": "ecapa", "reason": "ecapa: too short", "shard": "000003"},
    ]
    assert "missing-audio" not in reopened and len(reopened) == 1
    info = reopened.info()
    assert info["num_failures"] == 2 and info["attrs"] == {"random_teachers": True}


# ---------------------------------------------------------------- errors


def test_missing_cut_is_cut_not_found(store_url: str, specs_of: Any, outputs_of: Any) -> None:
    write(TeacherStore.create(store_url, specs_of()), outputs_of(["a"]))
    store = TeacherStore.open(store_url)
    with pytest.raises(CutNotFoundError, match="'nope'"):
        store.get("nope")
    with pytest.raises(KeyError):  # CutNotFoundError is also a KeyError
        store.get_many(["a", "nope"])


def test_duplicate_ids_name_both_places(store_url: str, specs_of: Any, outputs_of: Any) -> None:
    store = TeacherStore.create(store_url, specs_of())
    outputs = outputs_of(["a", "b"])
    with pytest.raises(DuplicateCutError, match=r"'a' put twice in shard 000000 \(positions 0 and 1\)"):
        with store.shard_writer(0) as writer:
            writer.put("a", outputs["a"])
            writer.put("a", outputs["a"])
    with store.shard_writer(0) as writer:
        writer.put("a", outputs["a"])
    with pytest.raises(DuplicateCutError, match="shard 000001 position 1, already committed in shard 000000"):
        with store.shard_writer(1) as writer:
            writer.put("b", outputs["b"])
            writer.put("a", outputs["a"])
    assert TeacherStore.open(store_url).cut_ids() == ["a"]


@pytest.mark.parametrize("teacher, value, message", [
    ("whisper", np.zeros((5, 15), np.float32), r"shape \[num_frames >= 1, 16\]. Got \[5, 15\]"),
    ("whisper", np.zeros((0, 16), np.float32), r"Got \[0, 16\]"),
    ("whisper", np.zeros(16, np.float32), r"Got \[16\]"),
    ("beats", np.zeros((1, 11), np.float32), r"shape \[11\]. Got \[1, 11\]"),
    ("ecapa", np.zeros(7, np.float32), r"shape \[6\]. Got \[7\]"),
    ("ecapa", np.array(["a"] * 6), "real-number array. Got dtype <U1"),
    ("ecapa", np.full(6, np.nan, np.float32), "6 NaN/Inf values"),
    ("whisper", np.full((2, 16), 1e6, np.float32), "beyond the float16 range"),
    ("wavlm", np.zeros(6, np.float32), r"teacher must be one of \['whisper', 'beats', 'ecapa'\]. Got 'wavlm'"),
])
def test_put_validates_and_names_cut_and_teacher(store_url: str, specs_of: Any, teacher: str, value: np.ndarray,
                                                 message: str) -> None:
    store = TeacherStore.create(store_url, specs_of())
    with store.shard_writer(0) as writer:
        with pytest.raises(ValidationError, match=message) as caught:
            writer.put("cut-7", {teacher: value})
        assert "'cut-7'" in str(caught.value)
        assert caught.value.teacher == teacher  # which teacher's array was refused, without parsing the message
        assert pickle.loads(pickle.dumps(caught.value)).teacher == teacher  # as dask carries it between processes
        writer.put("cut-8", {"ecapa": np.ones(6, np.float32)})  # the writer goes on after a refused put
    assert TeacherStore.open(store_url).cut_ids() == ["cut-8"]


@pytest.mark.parametrize("cut_id, outputs", [("", {"ecapa": np.ones(6)}), (7, {"ecapa": np.ones(6)}), ("c", {})])
def test_put_refuses_bad_ids_and_empty_outputs(store_url: str, specs_of: Any, cut_id: Any, outputs: Any) -> None:
    store = TeacherStore.create(store_url, specs_of())
    with store.shard_writer(0) as writer:
        with pytest.raises(ValidationError) as caught:
            writer.put(cut_id, outputs)
        assert caught.value.teacher is None  # the cut itself was refused, not one teacher's array


def test_committed_shard_needs_replace(store_url: str, specs_of: Any, outputs_of: Any) -> None:
    store = TeacherStore.create(store_url, specs_of())
    outputs = outputs_of(["a", "b"])
    with store.shard_writer(0) as writer:
        writer.put("a", outputs["a"])
    with pytest.raises(ShardCommittedError, match="shard 000000"):
        store.shard_writer(0).__enter__()
    with store.shard_writer(0, replace=True) as writer:
        writer.put("b", outputs["b"])
    reopened = TeacherStore.open(store_url)
    assert reopened.cut_ids() == ["b"] and reopened.leftovers() == [] and reopened.verify() == []
    assert_same(reopened.get("b"), outputs["b"], reopened.specs)
    assert reopened.is_committed(0) and reopened.is_committed("000000") and not reopened.is_committed(1)


def test_one_writer_per_shard(store_url: str, specs_of: Any, outputs_of: Any) -> None:
    store = TeacherStore.create(store_url, specs_of())
    outputs = outputs_of(["a", "b"])
    with store.shard_writer(0) as first:
        with pytest.raises(ShardLockedError, match="shard 000000"):
            with TeacherStore.open(store_url, mode="a").shard_writer(0):
                pass
        first.put("a", outputs["a"])
    assert TeacherStore.open(store_url).cut_ids() == ["a"]


def test_nothing_is_visible_before_commit_and_an_error_discards_the_shard(
        store_url: str, specs_of: Any, outputs_of: Any) -> None:
    store = TeacherStore.create(store_url, specs_of())
    outputs = outputs_of(["a", "b"])
    with pytest.raises(RuntimeError, match="teacher crashed"):
        with store.shard_writer(0) as writer:
            writer.put("a", outputs["a"])
            assert len(TeacherStore.open(store_url)) == 0
            raise RuntimeError("teacher crashed")
    reopened = TeacherStore.open(store_url)
    assert len(reopened) == 0 and reopened.leftovers() == [] and reopened.verify() == []
    with store.shard_writer(0) as writer:  # the shard can be written again
        writer.put("b", outputs["b"])
    assert TeacherStore.open(store_url).cut_ids() == ["b"]


def test_open_and_create_errors(store_url: str, specs_of: Any) -> None:
    with pytest.raises(StoreNotFoundError):
        TeacherStore.open(store_url)
    TeacherStore.create(store_url, specs_of())
    with pytest.raises(StoreError, match="overwrite=True"):
        TeacherStore.create(store_url, specs_of())
    with pytest.raises(StoreError, match="read-only"):
        TeacherStore.open(store_url).shard_writer(0)
    fresh = TeacherStore.create(store_url, specs_of("float32")[:1], overwrite=True)
    assert list(fresh.specs) == ["whisper"] and fresh.specs["whisper"].dtype == "float32"


def test_a_spec_that_cannot_be_stored_is_refused_before_anything_is_written(store_url: str, specs_of: Any,
                                                                           outputs_of: Any) -> None:
    bad = TeacherSpec("whisper", "frames", 8, frame_rate=25.0, config={"layer": np.int64(-1)})
    with pytest.raises(ConfigError, match="teacher 'whisper'.*JSON-serialisable"):
        TeacherStore.create(store_url, [bad])
    with pytest.raises(StoreNotFoundError):
        TeacherStore.open(store_url)
    store = TeacherStore.create(store_url, specs_of())  # nothing was left in the way
    write(store, outputs_of(["a"]))
    with pytest.raises(ConfigError, match="teacher 'whisper'"):
        TeacherStore.create(store_url, [bad], overwrite=True)  # and the store it would replace is kept
    assert TeacherStore.open(store_url).cut_ids() == ["a"]


def test_overwrite_never_deletes_something_that_is_not_a_store(tmp_path: Path, specs_of: Any) -> None:
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("...")
    with pytest.raises(StoreError, match="replaces an mt2kd store only"):
        TeacherStore.create(str(precious), specs_of(), overwrite=True)
    assert (precious / "chapter1.tex").read_text() == "..."


def test_specs_and_attrs_travel_with_the_store(store_url: str) -> None:
    spec = TeacherSpec("whisper", "frames", 8, frame_rate=25.0, fingerprint="abc123",
                       config={"layer": -1, "mode": "trim"})
    TeacherStore.create(store_url, [spec], attrs={"random_teachers": True, "corpus": "demo"})
    store = TeacherStore.open(store_url)
    assert store.specs == {"whisper": spec}
    assert store.attrs == {"random_teachers": True, "corpus": "demo"}


# ---------------------------------------------------------------- info, verify


def test_info_counts_what_was_written(store_url: str, specs_of: Any, outputs_of: Any) -> None:
    outputs = outputs_of([f"c{i}" for i in range(7)], seed=5)
    write(TeacherStore.create(store_url, specs_of()), outputs, cuts_per_shard=3)
    info = TeacherStore.open(store_url).info()
    num_frames = sum(o["whisper"].shape[0] for o in outputs.values())
    assert (info["num_cuts"], info["num_shards"], info["num_failures"]) == (7, 3, 0)
    assert info["num_frames"] == num_frames
    assert info["audio_hours"] == pytest.approx(num_frames / 25.0 / 3600.0)
    whisper = info["teachers"]["whisper"]
    assert whisper["float32_bytes"] == num_frames * 16 * 4
    assert 0 < whisper["bytes_on_disk"] and whisper["dtype"] == "float16" and whisper["codec"] == "blosc-lz4"
    assert info["bytes_on_disk"] > info["teacher_bytes_on_disk"] > 0


def test_verify_reports_missing_cuts_and_frame_counts(store_url: str, specs_of: Any, outputs_of: Any) -> None:
    outputs = outputs_of(["a", "b"], seed=6)
    write(TeacherStore.create(store_url, specs_of()), outputs)
    store = TeacherStore.open(store_url)
    assert store.verify() == []
    frames_a, frames_b = (outputs[c]["whisper"].shape[0] for c in ("a", "b"))
    durations = {"a": (frames_a + 0.9) / 25.0, "b": (frames_b + 3) / 25.0, "gone": 2.0}
    problems = store.verify(durations)
    assert len(problems) == 2
    assert str(problems[0]).startswith(f"cut 'b', teacher 'whisper': {frames_b} frames must match")
    assert (problems[0].kind, problems[0].cut_id, problems[0].teacher, problems[0].shard) == (
        "frame_count", "b", "whisper", "000000")
    assert str(problems[1]) == "cut 'gone' is in the manifest but not in the store"
    assert (problems[1].kind, problems[1].cut_id, problems[1].teacher) == ("missing", "gone", None)


def test_verify_counts_a_cut_recorded_as_failed_as_present(store_url: str, specs_of: Any, outputs_of: Any) -> None:
    store = TeacherStore.create(store_url, specs_of())
    with store.shard_writer(0) as writer:
        writer.put("a", outputs_of(["a"])["a"])
        writer.record_failure("bad", "audio file could not be decoded")
        writer.record_failure("half", "NaN logits", teacher="beats")
    frames = store.num_frames("a", "whisper")
    problems = store.verify({"a": frames / 25.0, "bad": 3.0, "half": 2.0})
    assert [(p.kind, p.cut_id) for p in problems] == [("missing", "half")]  # a teacher's failure is not the cut's


def test_a_cut_committed_twice_by_racing_writers_is_refused_at_open(store_url: str, specs_of: Any,
                                                                   outputs_of: Any) -> None:
    """Two writers that checked for duplicates before either committed: readers name both shards."""
    store = TeacherStore.create(store_url, specs_of())
    with store.shard_writer(0) as writer:
        writer.put("twice", outputs_of(["twice"])["twice"])
    record = store.loc.read("commits/000000/zarr.json")
    store.loc.write("commits/000001/zarr.json", record.replace(b'"shard": "000000"', b'"shard": "000001"'))
    with pytest.raises(DuplicateCutError, match="'twice' twice in .*shard 000000 position 0 and shard 000001"):
        TeacherStore.open(store_url)


def test_verify_and_leftovers_list_folders_a_fixed_number_of_times_on_fsspec(specs_of: Any, outputs_of: Any,
                                                                              monkeypatch: Any) -> None:
    # one listing per shard is one request per shard on an object store: 10,000 for a big store
    import uuid

    from mt2kd.store import _fs

    url = f"memory://mt2kd-test-{uuid.uuid4().hex}"
    write(TeacherStore.create(url, specs_of()), outputs_of([f"cut-{i}" for i in range(40)]), cuts_per_shard=1)
    store = TeacherStore.open(url)
    listed: list[str] = []
    listdir = _fs.FsspecLocation.listdir

    def counted(self: Any, path: str) -> list[str]:
        listed.append(path)
        return listdir(self, path)

    monkeypatch.setattr(_fs.FsspecLocation, "listdir", counted)
    assert store.leftovers() == [] and store.verify() == []
    assert len(store.shards) == 40 and len(listed) < 20, listed
