"""On-disk layout of a teacher store: names, codecs, Zarr v3 metadata and shard files.

Every data array is a Zarr v3 array with exactly one shard (the sharding
codec, ``sharding_indexed``): one file ``c/0/0`` holding its inner chunks one
after the other and, at its end, the chunk index (``num_chunks`` pairs of
little-endian uint64 ``(offset, nbytes)`` followed by a crc32c of those
bytes). The writer produces that file itself, chunk by chunk as rows arrive,
and the reader fetches byte ranges of it directly; the metadata
(``zarr.json``) comes from zarr-python itself, so plain ``zarr`` reads every
array. See docs/store-format.md.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import re
from typing import Any

import google_crc32c
import numcodecs
import numpy as np
from numcodecs.abc import Codec

from mt2kd.errors import StoreFormatError
from mt2kd.store._spec import TeacherSpec

FORMAT_VERSION = 2  # bump on any incompatible layout change; 2: a crc32c after every chunk, a store token
ROOT_KEY = "mt2kd"  # root group attribute holding version, specs and store attrs
SHARD_KEY = "mt2kd_shard"  # shard group attribute: what the shard holds
COMMIT_KEY = "mt2kd_commit"  # commit record attribute: the shard's index
SHARDS_DIR = "shards"  # group of shard data groups "<shard>.<attempt>"
COMMITS_DIR = "commits"  # group of commit records "<shard>" (one group each)
LOCKS_DIR = "locks"  # plain files "<shard>.lock" (not zarr nodes)
METADATA_FILE = "zarr.json"
CHUNK_FILE = "c/0/0"  # the one shard of a 2-D array (default key encoding, "/" separator)
CHUNK_FILE_1D = "c/0"  # the one shard of a 1-D array
CUT_ID_BYTES = "cut_id_bytes"  # uint8 [sum of UTF-8 lengths]: cut IDs back to back
CUT_ID_OFFSETS = "cut_id_offsets"  # int64 [num_cuts + 1]: cut i is bytes[o[i]:o[i+1]]
DATA = "data"  # [num_rows, dim] per teacher
OFFSETS = "offsets"  # int64 [num_cuts + 1] per teacher: rows of cut i are o[i]:o[i+1]
FRAMES_CHUNK_BYTES = 96 * 1024  # bytes of one inner chunk of frames: a 12 s cut spans ~20
CLIP_CHUNK_BYTES = 16 * 1024  # bytes of one inner chunk of clip rows: one get decodes little
INDEX_ENTRY_BYTES = 16  # (offset, nbytes) as two uint64
CRC_BYTES = 4  # crc32c after the shard index
MISSING = 2**64 - 1  # index entry of an absent chunk
BLOSC_MAX_LEVEL = 9
SHARD_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SHARD_DIGITS = 6  # integer shard IDs are zero-padded: 7 -> "000007"
FORBIDDEN_CODECS = ("pickle", "vlen-utf8", "vlen-bytes", "vlen-array", "json2", "msgpack2")
FORBIDDEN_DTYPES = ("object", "string", "variable_length_utf8", "variable_length_bytes")


def shard_name(shard_id: int | str) -> str:
    """The file-system name of a shard: ints zero-padded, strings checked.

    Examples
    --------
    >>> shard_name(7), shard_name("train-a")
    ('000007', 'train-a')
    """
    if isinstance(shard_id, (int, np.integer)) and not isinstance(shard_id, bool):
        if shard_id < 0:
            raise StoreFormatError(f"shard IDs must be >= 0. Got {shard_id}.")
        return f"{int(shard_id):0{SHARD_DIGITS}d}"
    if isinstance(shard_id, str) and SHARD_NAME.match(shard_id):
        return shard_id
    raise StoreFormatError(f"a shard ID must be an int >= 0 or 1-64 of [A-Za-z0-9_-]. Got {shard_id!r}.")


def chunk_rows(spec: TeacherSpec) -> int:
    """Rows per inner chunk: a power of two near the kind's target chunk size."""
    row_bytes = spec.dim * np.dtype(spec.dtype).itemsize
    target = FRAMES_CHUNK_BYTES if spec.kind == "frames" else CLIP_CHUNK_BYTES
    return 2 ** max(0, int(math.floor(math.log2(max(1, target // row_bytes)))))


def make_codec(codec: str, level: int, itemsize: int) -> Codec | None:
    """The numcodecs codec that encodes (and decodes) one inner chunk; None for raw bytes."""
    if codec == "none":
        return None
    if codec == "zstd":
        return numcodecs.Zstd(level=level)
    cname = codec.split("-", 1)[1]
    # bit shuffle groups the sign/exponent bits of 2-byte floats, where the redundancy is
    shuffle = numcodecs.Blosc.BITSHUFFLE if itemsize == 2 else numcodecs.Blosc.SHUFFLE
    return numcodecs.Blosc(cname=cname, clevel=min(level, BLOSC_MAX_LEVEL), shuffle=shuffle)


def _zarr_compressors(codec: str, level: int, itemsize: int) -> Any:
    """The inner chunks' bytes-to-bytes codecs: the compressor (none for ``"none"``), then ``crc32c``."""
    from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

    if codec == "none":
        return (Crc32cCodec(),)
    if codec == "zstd":
        return ZstdCodec(level=level), Crc32cCodec()
    shuffle: Any = "bitshuffle" if itemsize == 2 else "shuffle"
    cname: Any = codec.split("-", 1)[1]
    return (BloscCodec(cname=cname, clevel=min(level, BLOSC_MAX_LEVEL), shuffle=shuffle, typesize=itemsize),
            Crc32cCodec())


def array_metadata(shape: tuple[int, ...], dtype: str, rows_per_chunk: int, codec: str, level: int) -> bytes:
    """``zarr.json`` of a one-shard array, as zarr-python itself writes it.

    The document comes from ``zarr.create_array(..., shards=...)`` in a
    throwaway in-memory store (metadata only; once per kind of array), with
    the shape and shard shape set for this array.
    """
    doc = copy.deepcopy(_metadata_template(tuple(shape[1:]), dtype, rows_per_chunk, codec, level))
    num_chunks = max(1, -(-shape[0] // rows_per_chunk))
    doc["shape"] = list(shape)
    doc["chunk_grid"]["configuration"]["chunk_shape"] = [num_chunks * rows_per_chunk, *shape[1:]]
    return json.dumps(doc, indent=2).encode("utf-8")


@functools.lru_cache(maxsize=256)
def _metadata_template(rest: tuple[int, ...], dtype: str, rows_per_chunk: int, codec: str,
                       level: int) -> dict[str, Any]:
    import zarr

    inner = (rows_per_chunk, *rest)
    scratch = zarr.storage.MemoryStore()
    zarr.create_array(scratch, shape=inner, dtype=dtype, chunks=inner, shards=inner,
                      compressors=_zarr_compressors(codec, level, np.dtype(dtype).itemsize), fill_value=0,
                      filters=None)
    doc: dict[str, Any] = json.loads(scratch._store_dict[METADATA_FILE].to_bytes())
    return doc


def group_metadata(attributes: dict[str, Any]) -> bytes:
    """``zarr.json`` of a Zarr v3 group with the given attributes."""
    doc = {"zarr_format": 3, "node_type": "group", "attributes": attributes}
    return json.dumps(doc, indent=1, ensure_ascii=False, allow_nan=False).encode("utf-8")


def parse_metadata(raw: bytes, where: str) -> dict[str, Any]:
    """A ``zarr.json`` document, refused when it is not Zarr v3 or uses an object codec."""
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise StoreFormatError(f"{where} must be a JSON document. Got unparsable bytes: {e}") from e
    if not isinstance(doc, dict) or doc.get("zarr_format") != 3:
        raise StoreFormatError(f"{where} must be Zarr v3 metadata. Got zarr_format={doc.get('zarr_format')!r}.")
    check_no_object_codecs(doc, where)
    return doc


def check_no_object_codecs(doc: dict[str, Any], where: str) -> None:
    """Refuse arrays whose dtype or codecs (at any depth) hold Python objects or pickles."""
    if doc.get("node_type") != "array":
        return
    dtype = doc.get("data_type")
    dtype_name = dtype.get("name") if isinstance(dtype, dict) else dtype
    if str(dtype_name).lower() in FORBIDDEN_DTYPES or str(dtype_name).startswith("|O"):
        raise StoreFormatError(f"{where}: mt2kd stores hold numeric arrays only. Got data_type {dtype_name!r}.")
    for name in _codec_names(doc.get("codecs", [])):
        if any(bad in name.lower() for bad in FORBIDDEN_CODECS):
            raise StoreFormatError(f"{where}: pickle and object codecs are never allowed. Got codec {name!r}.")


def _codec_names(codecs: Any) -> list[str]:
    names: list[str] = []
    for codec in codecs if isinstance(codecs, list) else []:
        if isinstance(codec, dict):
            names.append(str(codec.get("name", "")))
            config = codec.get("configuration") or {}
            if isinstance(config, dict):
                names += _codec_names(config.get("codecs", [])) + _codec_names(config.get("index_codecs", []))
                names += [str(config.get("id", ""))]  # numcodecs.* wrappers name the numcodecs id here
    return names


# ---------------------------------------------------------------- shard files


def encode_index(entries: list[tuple[int, int]]) -> bytes:
    """Shard index bytes: little-endian uint64 (offset, nbytes) pairs plus their crc32c."""
    table = np.asarray(entries, dtype="<u8").reshape(-1, 2).tobytes()
    return table + int(google_crc32c.value(table)).to_bytes(CRC_BYTES, "little")


def index_nbytes(num_chunks: int) -> int:
    return num_chunks * INDEX_ENTRY_BYTES + CRC_BYTES


def decode_index(raw: bytes, num_chunks: int, where: str) -> np.ndarray:
    """``[num_chunks, 2]`` uint64 (offset, nbytes) of a shard file's tail, crc-checked."""
    if len(raw) != index_nbytes(num_chunks):
        raise StoreFormatError(f"{where}: shard index must be {index_nbytes(num_chunks)} bytes. Got {len(raw)}.")
    table, crc = raw[:-CRC_BYTES], int.from_bytes(raw[-CRC_BYTES:], "little")
    if int(google_crc32c.value(table)) != crc:
        raise StoreFormatError(f"{where}: shard index checksum does not match (file truncated or corrupt).")
    return np.frombuffer(table, dtype="<u8").reshape(num_chunks, 2)


def num_chunks_of(num_rows: int, rows_per_chunk: int) -> int:
    """Inner chunks in the one shard of an array of ``num_rows`` rows (at least one)."""
    return max(1, -(-num_rows // rows_per_chunk))


def decode_chunk(raw: bytes, codec: Codec | None, dtype: np.dtype, shape: tuple[int, int]) -> np.ndarray:
    """One inner chunk as a ``shape`` array (full chunk: edge chunks are padded on disk)."""
    data = raw if codec is None else codec.decode(raw)
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def encode_chunk(rows: np.ndarray, codec: Codec | None) -> bytes:
    """One inner chunk as stored: the encoded rows, then their crc32c (4 bytes, little endian)."""
    data = np.ascontiguousarray(rows.astype(rows.dtype.newbyteorder("<"), copy=False))
    blob = bytes(data) if codec is None else bytes(codec.encode(data))
    return blob + int(google_crc32c.value(blob)).to_bytes(CRC_BYTES, "little")


class ChecksumError(StoreFormatError):
    """An inner chunk whose bytes do not match its crc32c: the file is corrupt (bit rot, a bad copy).

    ``cut_ids`` names the cuts whose rows the chunk holds, once a reader knows them.
    """

    def __init__(self, message: str, path: str = "", chunk: int = -1, cut_ids: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.path, self.chunk, self.cut_ids = path, chunk, cut_ids


def checked_payload(blob: Any, path: str, chunk: int, offset: int) -> Any:
    """``blob`` less its trailing crc32c, which must match (else ChecksumError naming the file and chunk)."""
    stored = int.from_bytes(blob[-CRC_BYTES:], "little") if len(blob) >= CRC_BYTES else -1
    payload = blob[:-CRC_BYTES]
    computed = int(google_crc32c.value(bytes(payload)))  # it takes bytes only (a copy: ~3 us per 80 KiB chunk)
    if stored != computed:
        raise ChecksumError(f"{path}: chunk {chunk} (at byte {offset}, {len(blob)} bytes) must match its crc32c "
                            f"{stored:#010x}. Got {computed:#010x}: the file is corrupt", path, chunk)
    return payload


def has_checksums(doc: dict[str, Any]) -> bool:
    """Whether an array's ``zarr.json`` ends its inner chunks' codecs with ``crc32c`` (format 2 and later)."""
    for codec in doc.get("codecs") or []:
        if isinstance(codec, dict) and codec.get("name") == "sharding_indexed":
            inner = (codec.get("configuration") or {}).get("codecs") or []
            return bool(inner) and isinstance(inner[-1], dict) and inner[-1].get("name") == "crc32c"
    return False
