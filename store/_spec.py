"""What a teacher emits, as the store records it."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np

from mt2kd._typed import from_dict
from mt2kd.errors import ConfigError

Kind = Literal["frames", "clip", "text"]

KINDS: tuple[str, ...] = ("frames", "clip", "text")
DTYPES: tuple[str, ...] = ("float16", "float32")  # of numeric outputs (frames, clip)
CODES_DTYPE = "uint8"  # frames may also be codes: one codebook index (byte) per codebook, e.g. MVQ codes
TEXT_DTYPE = "uint8"  # a text output is stored as its UTF-8 bytes, one row of dim 1 per byte
TEXT_END = "\x00"  # closes each stored text, so an empty text still has a row (absent outputs have none)
CODECS: tuple[str, ...] = ("blosc-lz4", "blosc-zstd", "zstd", "none")
# bit-shuffled lz4: about 0.47x float32 on frames, ~0.5 ms/MiB to decode (docs/store-format.md)
DEFAULT_CODEC = "blosc-lz4"
DEFAULT_CODEC_LEVEL = 5  # blosc clevel / zstd level


@dataclasses.dataclass(frozen=True)
class TeacherSpec:
    """The shape, dtype and provenance of one teacher's output.

    Examples
    --------
    >>> TeacherSpec("whisper", "frames", 2560, frame_rate=25.0)
    TeacherSpec(name='whisper', kind='frames', dim=2560, frame_rate=25.0, ...)
    """

    name: str  # registry name of the teacher ("whisper", "beats", "ecapa")
    kind: Kind  # "frames": ragged [num_frames, dim] per cut; "clip": [dim] per cut; "text": a str per cut
    dim: int  # feature dimension of one frame or one clip vector; 1 for text (one byte a row)
    frame_rate: float | None = None  # Hz; frames only (25.0 for stacked whisper)
    # on-disk dtype, one of DTYPES; "" picks float16 for frames, float32 for clip, uint8 for text (frames of
    # codes: uint8)
    dtype: str = ""
    codec: str = DEFAULT_CODEC  # byte codec inside each shard, one of CODECS
    codec_level: int = DEFAULT_CODEC_LEVEL  # compression level of the codec
    fingerprint: str = ""  # hash of checkpoint bytes + teacher config + format version
    config: dict[str, Any] = dataclasses.field(default_factory=dict, compare=True, hash=False)  # teacher options

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"teacher name must be a non-empty identifier. Got {self.name!r}.")
        if self.kind not in KINDS:
            raise ConfigError(f"kind must be one of {list(KINDS)}. Got {self.kind!r}.")
        if not isinstance(self.dim, int) or self.dim <= 0:
            raise ConfigError(f"dim of teacher {self.name!r} must be a positive int. Got {self.dim!r}.")
        if self.kind == "frames" and not (self.frame_rate and self.frame_rate > 0):
            raise ConfigError(f"frame_rate of frames teacher {self.name!r} must be > 0. Got {self.frame_rate!r}.")
        if self.kind == "clip" and self.frame_rate is not None:
            raise ConfigError(f"clip teacher {self.name!r} has no frame_rate. Got {self.frame_rate!r}.")
        if self.kind == "text":
            self._check_text()
        if self.dtype == "":  # frozen: resolve the default in place, once
            object.__setattr__(self, "dtype", "float16" if self.kind == "frames" else "float32")
        if self.dtype not in DTYPES and not (self.kind == "text" and self.dtype == TEXT_DTYPE) \
                and not (self.kind == "frames" and self.dtype == CODES_DTYPE):
            raise ConfigError(f"dtype must be one of {list(DTYPES)}. Got {self.dtype!r}.")
        if self.codec not in CODECS:
            raise ConfigError(f"codec must be one of {list(CODECS)}. Got {self.codec!r}.")
        if not isinstance(self.codec_level, int) or not 0 <= self.codec_level <= 22:
            raise ConfigError(f"codec_level of teacher {self.name!r} must be an int in [0, 22]. "
                              f"Got {self.codec_level!r}.")

    def _check_text(self) -> None:
        if self.dim != 1 or self.frame_rate is not None:
            raise ConfigError(f"text teacher {self.name!r} must have dim 1 and no frame_rate. Got dim "
                              f"{self.dim!r}, frame_rate {self.frame_rate!r}.")
        if self.dtype not in ("", TEXT_DTYPE):
            raise ConfigError(f"text teacher {self.name!r} is stored as {TEXT_DTYPE!r} (UTF-8 bytes). "
                              f"Got dtype {self.dtype!r}.")
        object.__setattr__(self, "dtype", TEXT_DTYPE)

    def with_storage(self, dtype: str | None = None, codec: str | None = None,
                     codec_level: int | None = None) -> TeacherSpec:
        """Copy with other on-disk settings (the teacher's output is unchanged)."""
        return dataclasses.replace(
            self,
            dtype=self.dtype if dtype is None else dtype,
            codec=self.codec if codec is None else codec,
            codec_level=self.codec_level if codec_level is None else codec_level,
        )

    def text_of(self, stored: np.ndarray) -> str:
        """The text of a stored text output (the uint8 bytes ``get`` returns for a text teacher).

        Examples
        --------
        >>> spec.text_of(store.get("cut-1")["whisper-text"])  # doctest: +SKIP
        'hello world'
        """
        if self.kind != "text":
            raise ConfigError(f"text_of needs a text teacher. Got {self.name!r}, a {self.kind!r} teacher.")
        return np.asarray(stored, dtype=np.uint8).tobytes().decode("utf-8")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TeacherSpec:
        return from_dict(cls, data, tuples=False)
