"""What a teacher emits, as the store records it."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from mt2kd.errors import ConfigError

Kind = Literal["frames", "clip"]

KINDS: tuple[str, ...] = ("frames", "clip")
DTYPES: tuple[str, ...] = ("float16", "float32")
CODECS: tuple[str, ...] = ("blosc-lz4", "blosc-zstd", "zstd", "none")
DEFAULT_CODEC = "blosc-lz4"  # bit-shuffled lz4: about 0.47x float32 on frames, ~0.5 ms/MiB to decode (docs/store-format.md)
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
    kind: Kind  # "frames": ragged [num_frames, dim] per cut; "clip": [dim] per cut
    dim: int  # feature dimension of one frame or one clip vector
    frame_rate: float | None = None  # Hz; frames only (25.0 for stacked whisper)
    dtype: str = ""  # on-disk dtype, one of DTYPES; "" picks float16 for frames, float32 for clip outputs
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
        if self.dtype == "":  # frozen: resolve the default in place, once
            object.__setattr__(self, "dtype", "float16" if self.kind == "frames" else "float32")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {list(DTYPES)}. Got {self.dtype!r}.")
        if self.codec not in CODECS:
            raise ConfigError(f"codec must be one of {list(CODECS)}. Got {self.codec!r}.")
        if not isinstance(self.codec_level, int) or not 0 <= self.codec_level <= 22:
            raise ConfigError(f"codec_level of teacher {self.name!r} must be an int in [0, 22]. Got {self.codec_level!r}.")

    def with_storage(self, dtype: str | None = None, codec: str | None = None,
                     codec_level: int | None = None) -> TeacherSpec:
        """Copy with other on-disk settings (the teacher's output is unchanged)."""
        return dataclasses.replace(
            self,
            dtype=self.dtype if dtype is None else dtype,
            codec=self.codec if codec is None else codec,
            codec_level=self.codec_level if codec_level is None else codec_level,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TeacherSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown TeacherSpec fields {unknown}; expected a subset of {sorted(known)}.")
        return cls(**data)
