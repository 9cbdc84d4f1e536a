"""The on-disk format: plain zarr reads it, object codecs are refused, defaults compress."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import pytest
import zarr

from mt2kd.errors import StoreFormatError
from mt2kd.store import Problem, TeacherSpec, TeacherStore
from mt2kd.store._format import FORMAT_VERSION


def json_object(value: object) -> dict[str, Any]:
    """A JSON value (a zarr attribute) that must be an object."""
    assert isinstance(value, dict), value
    return value


def node_at(parent: zarr.Group, *keys: str) -> zarr.Array[Any] | zarr.Group:
    """``parent[keys[0]][keys[1]]...`` (every step but the last must be a group)."""
    node: zarr.Array[Any] | zarr.Group = parent
    for key in keys:
        assert isinstance(node, zarr.Group), f"{key!r} under an array"
        node = node[key]
    return node


def group_at(parent: zarr.Group, *keys: str) -> zarr.Group:
    group = node_at(parent, *keys)
    assert isinstance(group, zarr.Group), keys
    return group


def array_at(parent: zarr.Group, *keys: str) -> zarr.Array[Any]:
    array = node_at(parent, *keys)
    assert isinstance(array, zarr.Array), keys
    return array


def read(array: zarr.Array[Any], selection: slice = slice(None)) -> np.ndarray:
    """``array[selection]``: a numpy array for a slice."""
    values = array[selection]
    assert isinstance(values, np.ndarray), type(values)
    return values


def write_two_shards(path: Path, specs: list[TeacherSpec], outputs: dict[str, dict[str, np.ndarray]]) -> TeacherStore:
    store = TeacherStore.create(str(path), specs)
    cut_ids = list(outputs)
    for shard, chunk in enumerate((cut_ids[:2], cut_ids[2:])):
        with store.shard_writer(shard) as writer:
            for cut_id in chunk:
                writer.put(cut_id, outputs[cut_id])
    return TeacherStore.open(str(path))


def test_plain_zarr_reads_a_cut_as_docs_describe(tmp_path: Path, specs_of: Any, outputs_of: Any) -> None:
    outputs = outputs_of(["a", "b/ü", "c", "d"], seed=9)
    del outputs["c"]["beats"]
    write_two_shards(tmp_path / "s.zarr", specs_of(), outputs)
    # what docs/store-format.md tells a plain-zarr user to do (each lookup through a typed helper above)
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    assert json_object(root.attrs["mt2kd"])["format_version"] == FORMAT_VERSION
    for shard in group_at(root, "commits").group_keys():
        record = json_object(group_at(root, "commits", shard).attrs["mt2kd_commit"])
        group = group_at(root, record["path"])
        raw, ends = read(array_at(group, "cut_id_bytes")), read(array_at(group, "cut_id_offsets"))
        cut_ids = [bytes(raw[ends[i]:ends[i + 1]]).decode("utf-8") for i in range(len(ends) - 1)]
        assert cut_ids == record["cut_ids"]
        for i, cut_id in enumerate(cut_ids):
            for teacher in ("whisper", "beats"):
                offsets = read(array_at(group, teacher, "offsets"))
                rows = read(array_at(group, teacher, "data"), slice(offsets[i], offsets[i + 1]))
                if teacher not in outputs[cut_id]:
                    assert rows.shape[0] == 0
                    continue
                expected = outputs[cut_id][teacher]
                np.testing.assert_array_equal(rows.reshape(expected.shape), expected.astype(rows.dtype))
    data = array_at(root, record["path"], "whisper", "data")
    assert data.shards is not None and data.dtype == np.float16  # Zarr v3 sharding codec
    assert [c.to_dict()["name"] for c in data.metadata.codecs[0].codecs][-1] == "crc32c"  # type: ignore[union-attr]


def test_default_storage_is_under_048_of_float32(tmp_path: Path) -> None:
    """Temporally smooth frames with per-dimension scales, like encoder outputs (see bench/_common.py)."""
    rng = np.random.default_rng(0)
    dim = 256
    scale, offset = rng.lognormal(-0.5, 0.4, dim), rng.normal(0.0, 0.3, dim)
    outputs = {}
    for i in range(8):
        noise = rng.standard_normal((int(rng.integers(200, 400)), dim))
        smooth = np.empty_like(noise)
        smooth[0] = noise[0]
        for t in range(1, len(noise)):  # AR(1), rho 0.85, unit variance
            smooth[t] = 0.85 * smooth[t - 1] + np.sqrt(1 - 0.85 ** 2) * noise[t]
        outputs[f"cut-{i}"] = {"whisper": (smooth * scale + offset).astype(np.float32)}
    store = write_two_shards(tmp_path / "s.zarr", [TeacherSpec("whisper", "frames", dim, frame_rate=25.0)], outputs)
    whisper = store.info()["teachers"]["whisper"]
    float32_bytes = sum(o["whisper"].nbytes for o in outputs.values())
    assert whisper["float32_bytes"] == float32_bytes
    assert whisper["bytes_on_disk"] <= 0.48 * float32_bytes


def test_store_with_an_object_array_is_refused(tmp_path: Path, specs_of: Any, outputs_of: Any) -> None:
    path = tmp_path / "s.zarr"
    write_two_shards(path, specs_of(), outputs_of(["a", "b", "c"]))
    root = zarr.open_group(str(path), mode="a")
    strings = root.create_array("notes", shape=(2,), dtype=str)  # a vlen-utf8 codec
    strings[:] = np.array(["x", "y"])
    with pytest.raises(StoreFormatError, match="notes/zarr.json: mt2kd stores hold numeric arrays only"):
        TeacherStore.open(str(path))


def test_pickle_codec_is_refused_even_inside_a_shard(tmp_path: Path, specs_of: Any, outputs_of: Any) -> None:
    path = tmp_path / "s.zarr"
    store = write_two_shards(path, specs_of(), outputs_of(["a", "b", "c"]))
    record = store.shards["000000"]
    # swap a data array's metadata for one whose codec pipeline pickles (as numcodecs.zarr3 writes it)
    meta_path = path / record.path / "whisper" / "data" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["codecs"][0]["configuration"]["codecs"].append({"name": "numcodecs.pickle", "configuration": {}})
    meta_path.write_text(json.dumps(meta))
    reopened = TeacherStore.open(str(path))
    with pytest.raises(StoreFormatError, match="pickle and object codecs are never allowed"):
        reopened.get("a")
    assert any(p.kind == "unreadable" and "numcodecs.pickle" in str(p) for p in reopened.verify())


def test_corrupt_shard_file_is_reported_by_verify(tmp_path: Path, specs_of: Any, outputs_of: Any) -> None:
    path = tmp_path / "s.zarr"
    store = write_two_shards(path, specs_of(), outputs_of(["a", "b", "c"]))
    data = path / store.shards["000001"].path / "whisper" / "data" / "c" / "0" / "0"
    blob = bytearray(data.read_bytes())
    blob[-6] ^= 0xFF  # flip bits in the shard index: its crc32c no longer matches
    data.write_bytes(bytes(blob))
    problems = TeacherStore.open(str(path)).verify()
    assert len(problems) == 1 and str(problems[0]).startswith("shard 000001 (shards/000001.")
    assert "checksum" in str(problems[0]) and (problems[0].kind, problems[0].shard) == ("unreadable", "000001")


def test_nan_written_behind_the_api_is_reported(tmp_path: Path) -> None:
    spec = TeacherSpec("ecapa", "clip", 4, codec="none")  # raw bytes: easy to poke a NaN into
    store = TeacherStore.create(str(tmp_path / "s.zarr"), [spec])
    with store.shard_writer(0) as writer:
        writer.put("a", {"ecapa": np.ones(4, np.float32)})
        writer.put("b", {"ecapa": np.ones(4, np.float32)})
    data = tmp_path / "s.zarr" / store.shards["000000"].path / "ecapa" / "data" / "c" / "0" / "0"
    blob = bytearray(data.read_bytes())
    blob[16:20] = np.float32(np.nan).tobytes()  # cut "b", first value
    blob[32:36] = int(google_crc32c.value(bytes(blob[:32]))).to_bytes(4, "little")  # and the chunk's crc32c to match
    data.write_bytes(bytes(blob))
    problems = TeacherStore.open(str(tmp_path / "s.zarr")).verify()
    assert [str(p) for p in problems] == ["cut 'b', teacher 'ecapa' (shard 000000): 1 NaN/Inf values"]
    assert problems == [Problem("nonfinite", str(problems[0]), cut_id="b", teacher="ecapa", shard="000000")]


def test_newer_format_version_is_refused(tmp_path: Path, specs_of: Any) -> None:
    TeacherStore.create(str(tmp_path / "s.zarr"), specs_of())
    meta_path = tmp_path / "s.zarr" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["mt2kd"]["format_version"] = 99
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreFormatError, match=f"format_version must be <= {FORMAT_VERSION}"):
        TeacherStore.open(str(tmp_path / "s.zarr"))


def test_a_plain_zarr_group_is_not_a_store(tmp_path: Path) -> None:
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(StoreFormatError, match="must be an mt2kd store"):
        TeacherStore.open(str(tmp_path / "plain.zarr"))
