"""Building blocks of the Zipformer (arXiv 2310.11230) that are not attention.

Every module takes ``x`` ``[B, T, C]`` with ``mask`` ``[B, T]`` (True on valid
frames) and mixes over time only what the mask lets through, so a cut's
outputs do not depend on the padding its batch adds.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from mt2kd.train._regularisers import BYPASS_MIN, DROPOUT_SETTLED, DROPOUT_START, Balancer, Clock, Whiten


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def swoosh_l(x: torch.Tensor) -> torch.Tensor:
    """SwooshL(x) = log(1 + e^(x-4)) - 0.08 x - 0.035 (the paper's activation inside feed-forwards)."""
    return F.softplus(x - 4.0) - 0.08 * x - 0.035


def swoosh_r(x: torch.Tensor) -> torch.Tensor:
    """SwooshR(x) = log(1 + e^(x-1)) - 0.08 x - 0.313261687 (zero at x = 0)."""
    return F.softplus(x - 1.0) - 0.08 * x - 0.313261687


class BiasNorm(nn.Module):
    """``x / RMS(x - b) * exp(gamma)``: keeps the length information LayerNorm would remove."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rms = (x - self.bias).pow(2).mean(-1, keepdim=True).add(1e-8).rsqrt()
        return x * rms * self.log_scale.exp()


class Bypass(nn.Module):
    """``x_in + c * (x - x_in)`` with a learned per-channel ``c`` in [0, 1] (1: the module's output only).

    In train mode ``c`` is held at or above a scheduled floor (0.9 early, so
    new layers barely interfere, then 0.2); at eval it is used as learned.
    """

    def __init__(self, dim: int, clock: Clock) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), 0.5))
        self.clock = clock

    def forward(self, x_in: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        c = self.scale.clamp(self.clock.value(BYPASS_MIN), 1.0) if self.training else self.scale
        return x_in + c * (x - x_in)


class Downsample(nn.Module):
    """Frames ``[j*f, (j+1)*f)`` -> frame ``j``: a learned softmax-weighted mean over the valid ones among them."""

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.logits = nn.Parameter(torch.zeros(factor))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f, (b, t, c) = self.factor, x.shape
        pad = -t % f
        x = F.pad(x, (0, 0, 0, pad)).view(b, (t + pad) // f, f, c)
        valid = F.pad(mask, (0, pad)).view(b, (t + pad) // f, f)
        weights = self.logits.softmax(0).to(x.dtype) * valid  # a group's padding gets no weight
        weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-20)
        return (weights[..., None] * x).sum(2), valid.any(-1)


def upsample(x: torch.Tensor, factor: int, num_frames: int) -> torch.Tensor:
    """Each frame repeated ``factor`` times, cut to ``num_frames``."""
    return x.repeat_interleave(factor, dim=1)[:, :num_frames]


def to_channels(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Truncate or zero-pad the channel dimension to ``dim`` (how stacks of other widths meet)."""
    return x[..., :dim] if x.shape[-1] >= dim else F.pad(x, (0, dim - x.shape[-1]))


def relative_positions(num_frames: int, dim: int, device: torch.device) -> torch.Tensor:
    """Sinusoids of log-compressed offsets ``T-1 .. -(T-1)`` -> ``[2T-1, dim]`` (row ``T-1+i-j`` is offset i-j).

    Far offsets are compressed (``sign(r) * L * log(1 + |r| / L)``, ``L = sqrt(dim)``) so a few frequencies
    still tell near offsets apart without aliasing far ones.
    """
    offsets = torch.arange(num_frames - 1, -num_frames, -1, device=device, dtype=torch.float32)
    length = math.sqrt(dim)
    compressed = torch.sign(offsets) * length * torch.log1p(offsets.abs() / length)
    freqs = torch.exp(torch.arange(dim // 2, device=device) * (-math.log(1000.0) / max(1, dim // 2)))
    angles = compressed[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def dropout_rate(clock: Clock, settled: float) -> float:
    """Scheduled dropout: DROPOUT_START at step 0, ``settled`` from DROPOUT_SETTLED on."""
    return clock.value(((0.0, max(DROPOUT_START, settled)), (DROPOUT_SETTLED, settled)))


class FeedForward(nn.Module):
    """Linear -> (balancer) -> SwooshL -> dropout -> linear -> (whitener)."""

    def __init__(self, dim: int, hidden: int, dropout: float, clock: Clock, regularise: bool) -> None:
        super().__init__()
        self.inp, self.out = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.balance = Balancer(regularise, min_abs=0.0, max_abs=10.0)
        self.whiten = Whiten(regularise)
        self.clock, self.dropout = clock, dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = swoosh_l(self.balance(self.inp(x), mask))
        h = F.dropout(h, dropout_rate(self.clock, self.dropout), self.training)
        return self.whiten(self.out(h), mask)


class ConvModule(nn.Module):
    """Linear to 2C -> sigmoid gate -> mask -> depthwise conv over time -> SwooshR -> linear (no BatchNorm)."""

    def __init__(self, dim: int, kernel: int, clock: Clock, regularise: bool) -> None:
        super().__init__()
        self.inp = nn.Linear(dim, 2 * dim)
        self.depthwise = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.out = nn.Linear(dim, dim)
        self.balance = Balancer(regularise)
        self.whiten = Whiten(regularise)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        value, gate = self.inp(x).chunk(2, dim=-1)
        y = (value * gate.sigmoid()) * mask[..., None]  # padding enters the conv as zeros, as for a cut alone
        y = self.depthwise(y.transpose(1, 2)).transpose(1, 2)
        y = swoosh_r(self.balance(y, mask))
        return self.whiten(self.out(y), mask)
