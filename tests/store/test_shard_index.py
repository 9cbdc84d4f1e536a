"""Shard index entries the reader must honour: absent chunks (all 0xFF) and entries that cannot be right."""

from __future__ import annotations

import json
from pathlib import Path

import google_crc32c
import numpy as np
import pytest
import zarr

from mt2kd.errors import StoreFormatError
from mt2kd.store import TeacherSpec, TeacherStore
from mt2kd.store._format import CRC_BYTES, MISSING, decode_index, encode_index, index_nbytes

DIM = 2048  # 4 KiB float16 rows: 16 rows per inner chunk, so a few rows span several chunks
ROWS_PER_CHUNK = 16


def write_store(path: Path) -> tuple[TeacherStore, dict[str, np.ndarray]]:
    """Cuts "a" (40 rows: chunks 0-2) and "b" (20 rows: chunks 2-3) in one shard."""
    rng = np.random.default_rng(3)
    frames = {"a": rng.standard_normal((40, DIM)).astype(np.float32),
              "b": rng.standard_normal((20, DIM)).astype(np.float32)}
    store = TeacherStore.create(str(path), [TeacherSpec("whisper", "frames", DIM, frame_rate=25.0)])
    with store.shard_writer(0) as writer:
        for cut_id, rows in frames.items():
            writer.put(cut_id, {"whisper": rows})
    assert store.shards["000000"].teachers["whisper"].rows_per_chunk == ROWS_PER_CHUNK
    return store, frames


def data_folder(path: Path, store: TeacherStore) -> Path:
    return path / store.shards["000000"].path / "whisper" / "data"


def rewrite_entry(folder: Path, chunk: int, entry: tuple[int, int], num_chunks: int = 4) -> None:
    """Replace one (offset, nbytes) entry of the shard index, with a matching crc32c."""
    shard = folder / "c" / "0" / "0"
    blob = shard.read_bytes()
    tail = len(blob) - index_nbytes(num_chunks)
    entries = [(int(row[0]), int(row[1])) for row in decode_index(blob[tail:], num_chunks, str(shard))]
    entries[chunk] = entry
    shard.write_bytes(blob[:tail] + encode_index(entries))


def test_an_absent_chunk_reads_as_the_fill_value_like_plain_zarr(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    store, frames = write_store(path)
    folder = data_folder(path, store)
    rewrite_entry(folder, 1, (MISSING, MISSING))  # rows 16-31 of cut "a": what zarr writes for an empty chunk
    meta = json.loads((folder / "zarr.json").read_text())
    meta["fill_value"] = 1.5  # a fill value other than 0 shows it comes from the metadata
    (folder / "zarr.json").write_text(json.dumps(meta))
    reopened = TeacherStore.open(str(path))
    got = reopened.get("a")["whisper"]
    expected = frames["a"].astype(np.float16)
    expected[16:32] = 1.5
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got, zarr.open_array(str(folder), mode="r")[0:40])
    both = reopened.get_many(["b", "a"])  # the batched path decodes the shared chunk 2 once
    np.testing.assert_array_equal(both[0]["whisper"], frames["b"].astype(np.float16))
    np.testing.assert_array_equal(both[1]["whisper"], expected)


def test_a_half_absent_index_entry_is_a_format_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    store, _ = write_store(path)
    rewrite_entry(data_folder(path, store), 2, (MISSING, 100))
    with pytest.raises(StoreFormatError, match=r"whisper/data/c/0/0: .*half-absent entry for chunk 2"):
        TeacherStore.open(str(path)).get("b")


def test_an_entry_pointing_past_the_data_is_a_format_error(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    store, _ = write_store(path)
    rewrite_entry(data_folder(path, store), 3, (10**9, 100))
    reopened = TeacherStore.open(str(path))
    with pytest.raises(StoreFormatError, match=r"c/0/0: every chunk must end before the shard index"):
        reopened.get("a")
    problems = reopened.verify()
    assert len(problems) == 1 and "every chunk must end before the shard index" in str(problems[0])
    assert (problems[0].kind, problems[0].shard) == ("unreadable", "000000")


def test_raw_chunks_back_to_back_read_as_one_range_per_cut(tmp_path: Path) -> None:
    """codec="none": every chunk is checked against its crc32c, so a cut's rows are copied chunk by chunk."""
    path = tmp_path / "s.zarr"
    rng = np.random.default_rng(4)
    frames = {f"c{i}": rng.standard_normal((int(n), DIM)).astype(np.float32) for i, n in enumerate([40, 7, 20, 33])}
    store = TeacherStore.create(str(path), [TeacherSpec("whisper", "frames", DIM, frame_rate=25.0, codec="none")])
    with store.shard_writer(0) as writer:
        for cut_id, rows in frames.items():
            writer.put(cut_id, {"whisper": rows})
    reopened = TeacherStore.open(str(path))
    order = ["c2", "c0", "c3", "c1"]  # neighbouring cuts share inner chunks (16 rows each)
    for cut_id, got in zip(order, reopened.get_many(order)):
        np.testing.assert_array_equal(got["whisper"], frames[cut_id].astype(np.float16))
    record = reopened.shards["000000"]
    facts = reopened._reader.shard_file(record, "whisper")
    assert facts.checksums and facts.row_bytes == 0  # the one-range path is for files without checksums only
    num_chunks = -(-100 // ROWS_PER_CHUNK)
    rewrite_entry(data_folder(path, reopened), 0, (MISSING, MISSING), num_chunks)
    again = TeacherStore.open(str(path))
    first = again.get("c0")["whisper"]
    assert again._reader.shard_file(record, "whisper").row_bytes == 0
    np.testing.assert_array_equal(first[16:], frames["c0"][16:].astype(np.float16))
    assert not first[:16].any()  # the absent chunk reads as the fill value 0


def test_a_chunk_whose_header_disagrees_with_the_index_is_refused(tmp_path: Path) -> None:
    """A corrupt blosc header must not make the decoder read past the chunk (or the file)."""
    path = tmp_path / "s.zarr"
    store, _ = write_store(path)
    shard = data_folder(path, store) / "c" / "0" / "0"
    blob = bytearray(shard.read_bytes())
    offset, _ = (int(v) for v in decode_index(bytes(blob[-index_nbytes(4):]), 4, str(shard))[3])
    blob[offset + 12:offset + 16] = (10**6).to_bytes(4, "little")  # chunk 3 claims a megabyte
    end = offset + int(decode_index(bytes(blob[-index_nbytes(4):]), 4, str(shard))[3][1]) - CRC_BYTES
    blob[end:end + CRC_BYTES] = int(google_crc32c.value(bytes(blob[offset:end]))).to_bytes(CRC_BYTES, "little")
    shard.write_bytes(bytes(blob))  # with a matching crc32c: a writer that wrote a bad header
    reopened = TeacherStore.open(str(path))
    np.testing.assert_array_equal(reopened.get("a")["whisper"].shape, (40, DIM))  # chunks 0-2 are fine
    with pytest.raises(StoreFormatError, match=r"whisper/data/c/0/0: the blosc chunk at byte \d+ must be \d+ bytes"):
        reopened.get("b")
    assert [p.kind for p in reopened.verify()] == ["unreadable"]
