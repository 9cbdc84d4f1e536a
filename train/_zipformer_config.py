"""Frozen configuration of the Zipformer student encoder (torch-free: the CLI reads it).

Sizes follow the Zipformer paper (Yao et al., arXiv 2310.11230): six stacks
running at downsampling factors (1, 2, 4, 8, 4, 2) relative to the 50 Hz
front-end output, each with its own width, depth, heads and feed-forward
size. The ``m`` preset is the paper's Zipformer-M; ``tiny`` is for tests.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mt2kd._typed import from_dict
from mt2kd.errors import ConfigError

_PER_STACK = ("downsampling", "encoder_dims", "num_layers", "num_heads", "ffn_dims", "conv_kernels")


@dataclasses.dataclass(frozen=True)
class ZipformerConfig:
    """Sizes and regularisation of a Zipformer encoder (one entry per stack in the tuple fields).

    Examples
    --------
    >>> ZipformerConfig().output_dim, len(ZipformerConfig().num_layers)
    (512, 6)
    """

    frontend_channels: tuple[int, ...] = (8, 32, 128)  # channels of the three front-end convs (100 -> 50 Hz)
    downsampling: tuple[int, ...] = (1, 2, 4, 8, 4, 2)  # per stack: frame-rate divisor relative to 50 Hz
    encoder_dims: tuple[int, ...] = (192, 256, 384, 512, 384, 256)  # per stack: width of its layers
    num_layers: tuple[int, ...] = (2, 2, 3, 4, 3, 2)  # per stack: Zipformer layers
    num_heads: tuple[int, ...] = (4, 4, 4, 8, 4, 4)  # per stack: attention heads
    ffn_dims: tuple[int, ...] = (512, 768, 1024, 1536, 1024, 768)  # per stack: middle FF size (others 3/4, 5/4)
    conv_kernels: tuple[int, ...] = (31, 31, 15, 15, 15, 31)  # per stack: depthwise conv kernel (odd)
    query_head_dim: int = 32  # per head: query/key size of the attention weights
    value_head_dim: int = 12  # per head: value size of the two self-attention modules
    pos_head_dim: int = 4  # per head: size of the relative-position query
    pos_dim: int = 48  # size of the relative positional encoding before its projection
    dropout: float = 0.1  # dropout after the schedule settles (it starts at 0.3)
    regularise: bool = True  # activation balancers and whiteners in train mode (never at eval)
    schedule_scale: float = 1.0  # stretches the step breakpoints of every scheduled rate (tiny runs: < 1)

    def __post_init__(self) -> None:
        counts = {name: len(getattr(self, name)) for name in _PER_STACK}
        if len(set(counts.values())) != 1:
            raise ConfigError(f"zipformer per-stack fields must all have one entry per stack. Got lengths {counts}.")
        for dim, heads in zip(self.encoder_dims, self.num_heads):
            if heads < 1 or dim < 4:
                raise ConfigError(f"every stack needs >= 1 head and dim >= 4. Got dim {dim}, heads {heads}.")
        if any(k % 2 == 0 for k in self.conv_kernels):
            raise ConfigError(f"zipformer conv_kernels must be odd (symmetric padding). Got {list(self.conv_kernels)}.")
        if any(f < 1 for f in self.downsampling) or any(n < 1 for n in self.num_layers):
            raise ConfigError(f"downsampling and num_layers must be >= 1. Got {list(self.downsampling)}, "
                              f"{list(self.num_layers)}.")
        if len(self.frontend_channels) != 3:
            raise ConfigError(f"frontend_channels must name 3 conv widths. Got {list(self.frontend_channels)}.")
        if self.schedule_scale <= 0 or not 0 <= self.dropout < 1:
            raise ConfigError(f"schedule_scale must be > 0 and dropout in [0, 1). Got {self.schedule_scale}, "
                              f"{self.dropout}.")

    @property
    def output_dim(self) -> int:
        """Width of the encoder output (the widest stack: narrower ones are filled from earlier stacks)."""
        return max(self.encoder_dims)

    @property
    def num_stacks(self) -> int:
        return len(self.num_layers)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ZipformerConfig:
        return from_dict(cls, data)


ZIPFORMER_PRESETS: dict[str, ZipformerConfig] = {
    "m": ZipformerConfig(),
    "tiny": ZipformerConfig(
        frontend_channels=(4, 8, 16), encoder_dims=(16, 16, 24, 32, 24, 16), num_layers=(1, 1, 1, 1, 1, 1),
        num_heads=(2, 2, 2, 2, 2, 2), ffn_dims=(32, 32, 48, 64, 48, 32), conv_kernels=(7, 7, 5, 5, 5, 7),
        query_head_dim=8, value_head_dim=4, pos_head_dim=2, pos_dim=8, dropout=0.0, schedule_scale=0.01,
    ),
}
