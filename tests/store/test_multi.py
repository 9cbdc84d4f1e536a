"""open_stores: several stores read as one view."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mt2kd.errors import CutNotFoundError, DuplicateCutError, FingerprintMismatchError, StoreFormatError
from mt2kd.store import TeacherSpec, TeacherStore, open_stores


def make_store(path: Path, specs: list[TeacherSpec], outputs: dict[str, dict[str, np.ndarray]]) -> str:
    store = TeacherStore.create(str(path), specs)
    with store.shard_writer(0) as writer:
        for cut_id, arrays in outputs.items():
            writer.put(cut_id, arrays)
    return str(path)


def test_view_reads_every_store_in_request_order(tmp_path: Path, specs_of: Any, outputs_of: Any) -> None:
    a = outputs_of(["a1", "a2", "a3"], seed=1)
    b = {c: {"ecapa": o["ecapa"]} for c, o in outputs_of(["b1", "b2"], seed=2).items()}
    view = open_stores([make_store(tmp_path / "a.zarr", specs_of(), a),
                        make_store(tmp_path / "b.zarr", specs_of()[2:], b)])
    assert len(view) == 5 and "b2" in view and "c" not in view
    assert view.cut_ids() == ["a1", "a2", "a3", "b1", "b2"]
    order = ["b2", "a1", "b1", "a3"]
    got = view.get_many(order, teachers=["whisper", "ecapa"])
    assert [list(g) for g in got] == [["ecapa"], ["whisper", "ecapa"], ["ecapa"], ["whisper", "ecapa"]]
    np.testing.assert_array_equal(got[0]["ecapa"], b["b2"]["ecapa"])
    np.testing.assert_array_equal(got[3]["whisper"], a["a3"]["whisper"].astype(np.float16))
    with pytest.raises(CutNotFoundError, match="'zz'"):
        view.get("zz")
    problems = view.verify({"a1": 1.0, "nowhere": 1.0})
    assert str(problems[-1]) == "cut 'nowhere' is in the manifest but in none of the stores"
    assert (problems[-1].kind, problems[-1].cut_id, problems[-1].store) == ("missing", "nowhere", None)


def test_a_cut_in_two_stores_names_both(tmp_path: Path, specs_of: Any, outputs_of: Any) -> None:
    first = make_store(tmp_path / "first.zarr", specs_of(), outputs_of(["x", "shared"]))
    second = make_store(tmp_path / "second.zarr", specs_of(), outputs_of(["shared", "y"]))
    with pytest.raises(DuplicateCutError, match=r"cut 'shared' with teacher\(s\) \['whisper', 'beats', 'ecapa'\] "
                                                r"in both .*first.zarr and .*second.zarr"):
        open_stores([first, second])


def test_teachers_must_agree_across_stores(tmp_path: Path, outputs_of: Any) -> None:
    small = [TeacherSpec("ecapa", "clip", 6)]
    big = [TeacherSpec("ecapa", "clip", 192)]
    first = make_store(tmp_path / "a.zarr", small, {"a": {"ecapa": np.ones(6, np.float32)}})
    second = make_store(tmp_path / "b.zarr", big, {"b": {"ecapa": np.ones(192, np.float32)}})
    with pytest.raises(StoreFormatError, match="teacher 'ecapa' must have one shape across stores"):
        open_stores([first, second])


def test_a_cut_reads_each_teacher_from_the_store_holding_it(tmp_path: Path, specs_of: Any, outputs_of: Any) -> None:
    whole = outputs_of(["x", "y", "z"], seed=3)
    frames = {c: {"whisper": o["whisper"], "beats": o["beats"]} for c, o in whole.items()}
    added = {c: {"ecapa": o["ecapa"]} for c, o in whole.items() if c != "z"}
    a = make_store(tmp_path / "a.zarr", specs_of()[:2], frames)
    b = make_store(tmp_path / "b.zarr", specs_of()[2:], added)
    view = open_stores([a, b])
    assert len(view) == 3 and view.cut_ids() == ["x", "y", "z"]
    got = view.get_many(["z", "x"])
    assert sorted(got[0]) == ["beats", "whisper"] and sorted(got[1]) == ["beats", "ecapa", "whisper"]
    np.testing.assert_array_equal(got[1]["ecapa"], whole["x"]["ecapa"])
    np.testing.assert_array_equal(got[1]["whisper"], whole["x"]["whisper"].astype(np.float16))
    assert view.shapes("x") == {"whisper": whole["x"]["whisper"].shape, "beats": (11,), "ecapa": (6,)}
    assert view.num_frames("x", "whisper") == len(whole["x"]["whisper"])
    assert view.get_many(["y"], teachers=["ecapa"])[0].keys() == {"ecapa"}
    assert view.verify({"x": 100.0}) != [] and all(p.cut_id in ("x", None) for p in view.verify({"x": 100.0}))


def test_one_store_read_per_batch_and_store(tmp_path: Path, specs_of: Any, outputs_of: Any) -> None:
    whole = outputs_of(["x", "y"], seed=4)
    a = TeacherStore.open(make_store(tmp_path / "a.zarr", specs_of()[:2],
                                     {c: {"whisper": o["whisper"], "beats": o["beats"]} for c, o in whole.items()}))
    b = TeacherStore.open(make_store(tmp_path / "b.zarr", specs_of()[2:],
                                     {c: {"ecapa": o["ecapa"]} for c, o in whole.items()}))
    calls: list[tuple[str, list[str]]] = []
    for store in (a, b):
        read = store.get_many

        def counted(ids: Any, teachers: Any = None, _read: Any = read, _url: str = store.url) -> Any:
            calls.append((_url, list(ids)))
            return _read(ids, teachers)
        store.get_many = counted  # type: ignore[method-assign,assignment]
    view = open_stores([a, b])
    view.get_many(["y", "x"])
    assert calls == [(a.url, ["y", "x"]), (b.url, ["y", "x"])]
    calls.clear()
    view.get_many(["y", "x"], teachers=["ecapa"])  # a holds no ecapa: it is not read at all
    assert calls == [(b.url, ["y", "x"])]


def test_a_failed_output_may_come_from_another_store(tmp_path: Path, specs_of: Any, outputs_of: Any) -> None:
    whole = outputs_of(["x", "y"], seed=5)
    first = {"x": whole["x"], "y": {"whisper": whole["y"]["whisper"], "beats": whole["y"]["beats"]}}
    a = make_store(tmp_path / "a.zarr", specs_of(), first)  # y has no ecapa output in a (a failed teacher)
    b = make_store(tmp_path / "b.zarr", specs_of()[2:], {"y": {"ecapa": whole["y"]["ecapa"]}})
    got = open_stores([a, b]).get("y")
    np.testing.assert_array_equal(got["ecapa"], whole["y"]["ecapa"])


def test_a_teacher_pair_in_two_stores_is_named(tmp_path: Path, specs_of: Any, outputs_of: Any) -> None:
    whole = outputs_of(["x"], seed=6)
    a = make_store(tmp_path / "a.zarr", specs_of()[:2], {"x": {"whisper": whole["x"]["whisper"],
                                                              "beats": whole["x"]["beats"]}})
    b = make_store(tmp_path / "b.zarr", specs_of()[1:], {"x": {"beats": whole["x"]["beats"],
                                                              "ecapa": whole["x"]["ecapa"]}})
    with pytest.raises(DuplicateCutError, match=r"cut 'x' with teacher\(s\) \['beats'\] in both .*a.zarr and .*b.zarr"):
        open_stores([a, b])


def test_a_teacher_with_two_fingerprints_names_both_stores_and_the_options(tmp_path: Path) -> None:
    def spec(fingerprint: str, precision: str) -> TeacherSpec:
        return TeacherSpec("ecapa", "clip", 6, fingerprint=fingerprint, config={"precision": precision, "n": 1})

    row = {"ecapa": np.ones(6, np.float32)}
    first = make_store(tmp_path / "a.zarr", [spec("f1", "fp32")], {"a": row})
    same = make_store(tmp_path / "same.zarr", [spec("f1", "fp32")], {"c": row})
    other = make_store(tmp_path / "b.zarr", [spec("f2", "bf16")], {"b": row})
    weights = make_store(tmp_path / "w.zarr", [spec("f3", "fp32")], {"d": row})
    assert len(open_stores([first, same])) == 2
    with pytest.raises(FingerprintMismatchError,
                       match=r"teacher 'ecapa' must be the same teacher in every store. Got fingerprint f1 in "
                             r".*a.zarr and f2 in .*b.zarr; differing options: precision \('fp32' in .*a.zarr, "
                             r"'bf16' in .*b.zarr\)\.$"):
        open_stores([first, other])
    with pytest.raises(FingerprintMismatchError, match="the options are equal, so the checkpoints differ"):
        open_stores([first, weights])
