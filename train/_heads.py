"""Student heads, one per KD target, as a registry of kinds.

A head reads one block's output ``[B, T, D]`` (any encoder that returns
every block's output) and the valid-frame mask, and gives either frames
``[B, T, dim]`` or one vector per cut ``[B, dim]``:

- ``frames``: a linear projection per frame (M_ASR);
- ``mean``: a linear projection per frame, averaged over valid frames (M_AT);
- ``attentive``: attentive statistics pooling, then a linear layer (M_SV).

A new head kind is one :class:`HeadKind` entry in :data:`HEADS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from mt2kd.train._config import HeadConfig, StudentConfig


class AttentiveStatsPooling(nn.Module):
    """Attention-weighted mean and standard deviation over valid frames."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.score(x).squeeze(-1).masked_fill(~mask, float("-inf"))
        w = torch.softmax(scores.float(), dim=1).to(x.dtype)[..., None]
        mean = (w * x).sum(1)
        var = (w * (x - mean[:, None]) ** 2).sum(1)
        return torch.cat([mean, torch.sqrt(var.clamp_min(1e-5))], dim=-1)


class FrameProjection(nn.Module):
    """Linear per frame: ``[B, T, D] -> [B, T, dim]``."""

    def __init__(self, model_dim: int, dim: int, config: StudentConfig) -> None:
        super().__init__()
        self.linear = nn.Linear(model_dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.linear(x)  # type: ignore[no-any-return]


class MeanPooling(nn.Module):
    """Linear per frame, then the mean over valid frames: ``[B, T, D] -> [B, dim]``."""

    def __init__(self, model_dim: int, dim: int, config: StudentConfig) -> None:
        super().__init__()
        self.linear = nn.Linear(model_dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        weights = mask.to(x.dtype)[..., None] / lengths.clamp_min(1).to(x.dtype)[:, None, None]
        return (self.linear(x) * weights).sum(1)


class AttentivePooling(nn.Module):
    """Attentive statistics pooling, then a linear layer: ``[B, T, D] -> [B, dim]``."""

    def __init__(self, model_dim: int, dim: int, config: StudentConfig) -> None:
        super().__init__()
        self.pool = AttentiveStatsPooling(model_dim, config.sv_attention_dim)
        self.linear = nn.Linear(2 * model_dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.linear(self.pool(x, mask))  # type: ignore[no-any-return]


@dataclasses.dataclass(frozen=True)
class HeadKind:
    """A registered head: how to build it and what it yields."""

    build: Callable[[int, int, StudentConfig], nn.Module]  # (model_dim, out dim, student config) -> module
    per_frame: bool  # True: [B, T, dim] outputs for a frames teacher; False: [B, dim] for a clip teacher


HEADS: dict[str, HeadKind] = {
    "frames": HeadKind(FrameProjection, per_frame=True),
    "mean": HeadKind(MeanPooling, per_frame=False),
    "attentive": HeadKind(AttentivePooling, per_frame=False),
}


def build_heads(config: StudentConfig) -> nn.ModuleDict:
    """One module per head of ``config``, in its order (the order fixes their initial weights under a seed)."""
    return nn.ModuleDict({h.name: HEADS[h.kind].build(config.model_dim, h.dim, config)
                          for h in config.resolved_heads()})


def head_block(head: HeadConfig, num_blocks: int) -> int:
    """0-based block index a head reads (``-1`` and other negatives count from the end)."""
    return head.block - 1 if head.block > 0 else num_blocks + head.block


# checkpoints of the fixed-head student named its heads by role: their keys map onto the default heads
LEGACY_KEYS = {"asr_head.": "heads.whisper.linear.", "at_head.": "heads.beats.linear.",
               "sv_pool.": "heads.ecapa.pool.", "sv_head.": "heads.ecapa.linear."}


def rename_legacy_keys(state: dict[str, torch.Tensor], prefix: str = "") -> None:
    """Rename, in place, a fixed-head checkpoint's head weights to the keys of the default heads."""
    for key in [k for k in state if k.startswith(prefix)]:
        rest = key[len(prefix):]
        for old, new in LEGACY_KEYS.items():
            if rest.startswith(old):
                state[prefix + new + rest[len(old):]] = state.pop(key)
                break
