"""The configuration of ``mt2kd store quantize``: a frozen dataclass the CLI maps onto flag by flag."""

from __future__ import annotations

import dataclasses
from typing import Any

from mt2kd._typed import from_dict
from mt2kd.errors import ConfigError
from mt2kd.store._spec import CODECS

CODES_SUFFIX = "_mvq"  # the codes teacher of teacher "whisper" is "whisper_mvq" unless named otherwise
DEVICES = ("cpu", "cuda")


@dataclasses.dataclass(frozen=True)
class QuantizeConfig:
    """One quantisation run: train an MVQ quantiser on a store's frames, write every cut's codes to a new store.

    Examples
    --------
    >>> config = QuantizeConfig(source="labels.zarr", out="codes.zarr", num_codebooks=8)
    >>> config.codes_teacher
    'whisper_mvq'
    """

    source: str  # store holding the float frames (directory or fsspec URL)
    out: str  # store to write the codes to (made, or resumed when it exists)
    teacher: str = "whisper"  # frames teacher of the source store to quantise
    codes_name: str = ""  # teacher name of the codes in the new store ("": TEACHER_mvq)
    num_codebooks: int = 8  # bytes per frame: one uint8 index of 256 per codebook (4, 8, 16, ...)
    train_frames: int = 100_000  # frames sampled (seeded, across shards) to train the quantiser on
    heldout_frames: int = 5_000  # further frames, never trained on, for the reported reconstruction error
    iters: int = 10_000  # training steps of each of the package's two phases (its default)
    batch_frames: int = 600  # frames per training step (the package's tuning)
    lr: float = 0.005  # initial learning rate of the quantiser
    seed: int = 0  # frame sampling and training seed
    refine_iters: int = 5  # index refinement iterations when encoding (the package's default)
    codec: str = "blosc-lz4"  # byte codec of the codes arrays
    batch_cuts: int = 64  # cuts read and encoded together in a shard task
    workers: int = 1  # shard tasks at once: 1 runs them here, more on a dask LocalCluster of that many processes
    device: str = "cpu"  # torch device of training and encoding ("cpu", "cuda", "cuda:N")
    overwrite: bool = False  # delete an existing output store and start again (else a rerun resumes it)

    def __post_init__(self) -> None:
        if not self.source or not self.out:
            raise ConfigError(f"source and out must be store paths or URLs. Got {self.source!r} and {self.out!r}.")
        if self.num_codebooks not in (1, 2, 4, 8, 16, 32):
            raise ConfigError(f"num_codebooks must be one of [1, 2, 4, 8, 16, 32]. Got {self.num_codebooks}.")
        for name in ("train_frames", "iters", "batch_frames", "batch_cuts", "workers", "heldout_frames"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1. Got {getattr(self, name)}.")
        if self.refine_iters < 0 or not self.lr > 0:
            raise ConfigError(f"refine_iters must be >= 0 and lr > 0. Got {self.refine_iters} and {self.lr}.")
        if self.codec not in CODECS:
            raise ConfigError(f"codec must be one of {list(CODECS)}. Got {self.codec!r}.")
        if self.device.split(":")[0] not in DEVICES:
            raise ConfigError(f"device must be one of {list(DEVICES)} or cuda:N. Got {self.device!r}.")

    @property
    def codes_teacher(self) -> str:
        """The teacher name the codes get in the new store."""
        return self.codes_name or f"{self.teacher}{CODES_SUFFIX}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantizeConfig:
        return from_dict(cls, data, "quantize config", tuples=False)
