"""Text outputs (transcripts): stored as UTF-8 bytes with a closing 0 byte, read back as the same str."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import pytest

from mt2kd.errors import ConfigError, ValidationError
from mt2kd.store import TeacherSpec, TeacherStore
from mt2kd.store._format import CRC_BYTES

TEXT = TeacherSpec("whisper-text", "text", 1)


def test_text_spec_is_uint8_of_dim_1() -> None:
    assert TEXT.dtype == "uint8" and TEXT.frame_rate is None
    assert TeacherSpec.from_dict(TEXT.to_dict()) == TEXT
    with pytest.raises(ConfigError, match="must have dim 1 and no frame_rate. Got dim 4"):
        TeacherSpec("t", "text", 4)
    with pytest.raises(ConfigError, match="stored as 'uint8'.*Got dtype 'float16'"):
        TeacherSpec("t", "text", 1, dtype="float16")
    with pytest.raises(ConfigError, match=r"dtype must be one of \['float16', 'float32'\]. Got 'uint8'"):
        TeacherSpec("t", "clip", 1, dtype="uint8")  # uint8 is for text and for frames of codes


def test_texts_come_back_as_written_next_to_frames(store_url: str, specs_of: Any, outputs_of: Any) -> None:
    texts = {"a": "héllo wörld 你好", "b": "", "c": "x" * 70_000}  # "" is a text; c spans several chunks
    outputs = outputs_of(list(texts), seed=3)
    for cut_id, text in texts.items():
        outputs[cut_id]["whisper-text"] = text
    outputs["d"] = {"beats": outputs["a"]["beats"]}  # no text of d: absent, not empty
    store = TeacherStore.create(store_url, [*specs_of(), TEXT])
    with store.shard_writer(0) as writer:
        for cut_id, arrays in outputs.items():
            writer.put(cut_id, arrays)
    store = TeacherStore.open(store_url)
    assert store.texts(["c", "a", "b", "d"], "whisper-text") == [texts["c"], texts["a"], "", None]
    got = store.get("a")
    assert got["whisper-text"].dtype == np.uint8 and TEXT.text_of(got["whisper-text"]) == texts["a"]
    np.testing.assert_array_equal(got["whisper"], outputs["a"]["whisper"].astype(np.float16))
    assert store.shapes("a")["whisper-text"] == (len(texts["a"].encode()),)
    assert store.shapes("b")["whisper-text"] == (0,) and "whisper-text" not in store.shapes("d")
    assert store.verify() == []
    with pytest.raises(ConfigError, match=r"texts needs a text teacher, one of \['whisper-text'\]. Got 'beats'"):
        store.texts(["a"], "beats")


def test_the_writer_refuses_what_is_not_a_text(tmp_path: Path) -> None:
    store = TeacherStore.create(str(tmp_path / "s.zarr"), [TEXT])
    with store.shard_writer(0) as writer:
        with pytest.raises(ValidationError, match="cut 'a', teacher 'whisper-text': text output must be a str or "
                                                  "1-D uint8 UTF-8 bytes. Got ndarray"):
            writer.put("a", {"whisper-text": np.zeros(3, np.float32)})
        with pytest.raises(ValidationError, match="text output bytes must be UTF-8"):
            writer.put("a", {"whisper-text": np.array([0xFF], np.uint8)})
        writer.put("b", {"whisper-text": np.frombuffer("né".encode(), np.uint8)})
        with pytest.raises(ValidationError, match="must not hold a NUL character. Got one at position 2"):
            writer.put("a", {"whisper-text": "ab\x00c"})
        with pytest.raises(ValidationError, match="must be UTF-8 encodable"):
            writer.put("a", {"whisper-text": "\ud800"})
        writer.put("a", {"whisper-text": "ok"})
    assert TeacherStore.open(str(tmp_path / "s.zarr")).texts(["a", "b"], "whisper-text") == ["ok", "né"]


def test_verify_finds_a_text_that_is_not_utf8(tmp_path: Path) -> None:
    url = str(tmp_path / "s.zarr")
    store = TeacherStore.create(url, [TeacherSpec("t", "text", 1, codec="none")])
    with store.shard_writer(0) as writer:
        writer.put("a", {"t": "ab"})
    data = next((tmp_path / "s.zarr").glob("shards/*/t/data/c/0/0"))
    raw = bytearray(data.read_bytes())
    raw[0] = 0xFF  # raw chunk: the first byte of the text
    raw[3:3 + CRC_BYTES] = int(google_crc32c.value(bytes(raw[:3]))).to_bytes(CRC_BYTES, "little")  # "ab\0": crc too
    data.write_bytes(bytes(raw))
    problems = TeacherStore.open(url).verify()
    found = [p for p in problems if p.kind == "text"]
    assert len(found) == 1 and "cut 'a', teacher 't'" in found[0].message


def test_store_show_prints_the_text(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from mt2kd.cli import main

    url = str(tmp_path / "s.zarr")
    store = TeacherStore.create(url, [TEXT])
    with store.shard_writer(0) as writer:
        writer.put("a", {"whisper-text": "héllo"})
    shown = CliRunner().invoke(main, ["store", "show", url, "a"])
    assert shown.exit_code == 0, shown.output
    assert "Text" in shown.output and "'héllo'" in shown.output and "Bytes" in shown.output
    facts = json.loads(CliRunner().invoke(main, ["store", "show", url, "a", "--json"]).output)
    assert facts["teachers"]["whisper-text"]["text"] == "héllo"


def test_store_diff_of_text_teachers_names_texts_that_differ(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from mt2kd.cli import main

    for name, texts in (("a", {"x": "", "y": "same", "z": "one"}), ("b", {"x": "", "y": "same", "z": "three"})):
        store = TeacherStore.create(str(tmp_path / name), [TEXT])
        with store.shard_writer(0) as writer:
            for cut_id, text in texts.items():
                writer.put(cut_id, {"whisper-text": text})
    result = CliRunner().invoke(main, ["store", "diff", str(tmp_path / "a"), str(tmp_path / "b")])
    assert result.exit_code == 0 and "Cuts compared     : 2" in result.output, result.output
    assert "z: [3] vs [5]" in result.output
