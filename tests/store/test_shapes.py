"""Shapes and frame counts answered from the index, without reading array data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mt2kd.errors import ConfigError, CutNotFoundError
from mt2kd.store import TeacherStore, open_stores


def write_store(url: str, specs: list[Any], outputs: dict[str, dict[str, Any]]) -> TeacherStore:
    store = TeacherStore.create(url, specs)
    with store.shard_writer(0) as writer:
        for cut_id, arrays in outputs.items():
            writer.put(cut_id, arrays)
    return TeacherStore.open(url)


def test_shapes_and_num_frames_match_what_get_returns(store_url: str, specs_of: Any, outputs_of: Any) -> None:
    outputs = outputs_of(["a", "b/ü", "c"], seed=21)
    del outputs["c"]["whisper"]  # a cut without one teacher's output (a recorded teacher failure)
    store = write_store(store_url, specs_of(), outputs)
    for cut_id in outputs:
        got = store.get(cut_id)
        assert store.shapes(cut_id) == {t: a.shape for t, a in got.items()}
    assert store.num_frames("a", "whisper") == outputs["a"]["whisper"].shape[0]
    assert store.num_frames("c", "whisper") == 0 and "whisper" not in store.shapes("c")
    assert store.shapes("c") == {"beats": (11,), "ecapa": (6,)}


def test_shapes_do_not_read_array_data(tmp_path: Path, specs_of: Any, outputs_of: Any) -> None:
    outputs = outputs_of(["a", "b"], seed=22)
    store = write_store(str(tmp_path / "s.zarr"), specs_of(), outputs)
    for data_file in (tmp_path / "s.zarr").glob("shards/*/*/data/c/0/0"):
        data_file.unlink()
    reopened = TeacherStore.open(str(tmp_path / "s.zarr"))
    assert reopened.shapes("b")["whisper"] == outputs["b"]["whisper"].shape
    assert reopened.num_frames("a", "whisper") == outputs["a"]["whisper"].shape[0]
    with pytest.raises(FileNotFoundError):
        reopened.get("a")
    assert store.url == reopened.url


def test_num_frames_refuses_clip_teachers_and_unknown_cuts(store_url: str, specs_of: Any, outputs_of: Any) -> None:
    store = write_store(store_url, specs_of(), outputs_of(["a"], seed=23))
    with pytest.raises(ConfigError, match=r"num_frames needs a frames teacher, one of \['whisper'\]. Got 'beats'"):
        store.num_frames("a", "beats")
    with pytest.raises(ConfigError, match="Got 'hubert'"):
        store.num_frames("a", "hubert")
    with pytest.raises(CutNotFoundError, match="'nope'"):
        store.shapes("nope")


def test_a_multi_store_view_answers_from_the_owning_store(tmp_path: Path, specs_of: Any, outputs_of: Any) -> None:
    a = outputs_of(["a1"], seed=24)
    b = {c: {"ecapa": o["ecapa"]} for c, o in outputs_of(["b1"], seed=25).items()}
    write_store(str(tmp_path / "a.zarr"), specs_of(), a)
    write_store(str(tmp_path / "b.zarr"), specs_of()[2:], b)
    view = open_stores([str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")])
    assert view.shapes("b1") == {"ecapa": (6,)}
    assert view.num_frames("a1", "whisper") == a["a1"]["whisper"].shape[0]
    assert view.num_frames("b1", "whisper") == 0  # b.zarr has no whisper teacher at all
    with pytest.raises(CutNotFoundError, match="'zz'"):
        view.shapes("zz")
