"""open_stores: several stores read as one view."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mt2kd.errors import CutNotFoundError, DuplicateCutError, StoreFormatError
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
    with pytest.raises(DuplicateCutError, match="'shared' in both .*first.zarr and .*second.zarr"):
        open_stores([first, second])


def test_teachers_must_agree_across_stores(tmp_path: Path, outputs_of: Any) -> None:
    small = [TeacherSpec("ecapa", "clip", 6)]
    big = [TeacherSpec("ecapa", "clip", 192)]
    first = make_store(tmp_path / "a.zarr", small, {"a": {"ecapa": np.ones(6, np.float32)}})
    second = make_store(tmp_path / "b.zarr", big, {"b": {"ecapa": np.ones(192, np.float32)}})
    with pytest.raises(StoreFormatError, match="teacher 'ecapa' must have one shape across stores"):
        open_stores([first, second])
