"""One Zipformer layer (arXiv 2310.11230, Fig. 3): attention weights computed once and shared.

``FF -> NLA -> SA -> Conv -> FF -> bypass -> SA -> Conv -> FF -> BiasNorm -> bypass``:
the multi-head attention weights are computed once from the layer input and
used by the non-linear attention and both self-attention modules; the middle
bypass mixes the first half's output with the layer input.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mt2kd.train._regularisers import MODULE_SKIP, Clock, Whiten
from mt2kd.train._zipformer_config import ZipformerConfig
from mt2kd.train._zipformer_parts import BiasNorm, Bypass, ConvModule, FeedForward, relative_positions


class AttentionWeights(nn.Module):
    """Softmax attention weights ``[B, H, T, T]`` from content (q.k) and relative position (p.pos(i-j))."""

    def __init__(self, dim: int, heads: int, cfg: ZipformerConfig, regularise: bool) -> None:
        super().__init__()
        self.heads, self.qd, self.pd = heads, cfg.query_head_dim, cfg.pos_head_dim
        self.inp = nn.Linear(dim, heads * (2 * cfg.query_head_dim + cfg.pos_head_dim))
        self.pos = nn.Linear(cfg.pos_dim, heads * cfg.pos_head_dim, bias=False)
        self.pos_dim = cfg.pos_dim
        self.whiten_keys = Whiten(regularise, limit=2.0 * heads)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        h, qd, pd = self.heads, self.qd, self.pd
        q, k, p = self.inp(x).split([h * qd, h * qd, h * pd], dim=-1)
        k = self.whiten_keys(k, mask)
        q, k, p = (z.view(b, t, h, -1).transpose(1, 2) for z in (q, k, p))  # [B, H, T, d]
        scores = q @ k.transpose(-1, -2) / math.sqrt(qd)
        pos = self.pos(relative_positions(t, self.pos_dim, x.device).to(x.dtype))  # [2T-1, H*pd]
        pos_scores = p @ pos.view(2 * t - 1, h, pd).permute(1, 2, 0)  # [B, H, T, 2T-1]
        rows = torch.arange(t, device=x.device)
        index = (t - 1 + rows[None, :] - rows[:, None]).expand(b, h, t, t)  # column of offset i-j for (i, j)
        scores = scores + pos_scores.gather(-1, index)
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))  # padding is never attended to
        return scores.float().softmax(-1).to(x.dtype)


class SelfAttention(nn.Module):
    """Values mixed with given attention weights (two per layer share one set of weights)."""

    def __init__(self, dim: int, heads: int, value_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.inp = nn.Linear(dim, heads * value_dim)
        self.out = nn.Linear(heads * value_dim, dim)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        v = self.inp(x).view(b, t, self.heads, -1).transpose(1, 2)
        return self.out((weights @ v).transpose(1, 2).reshape(b, t, -1))


class NonlinAttention(nn.Module):
    """``out(c * attn(tanh(s) * a))`` with the first head's weights: attention with a multiplicative gate."""

    def __init__(self, dim: int, regularise: bool) -> None:
        super().__init__()
        hidden = 3 * dim // 4
        self.inp = nn.Linear(dim, 3 * hidden)
        self.out = nn.Linear(hidden, dim)
        self.whiten = Whiten(regularise)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        s, a, c = self.inp(x).chunk(3, dim=-1)
        mixed = weights[:, 0] @ (torch.tanh(s) * a)
        return self.whiten(self.out(mixed * c), mask)


class ZipformerLayer(nn.Module):
    """The Zipformer block: three feed-forwards (3/4, 1, 5/4 of ``ffn``), NLA, 2 SA, 2 conv, two bypasses."""

    def __init__(self, cfg: ZipformerConfig, stack: int, clock: Clock) -> None:
        super().__init__()
        dim, heads, ffn = cfg.encoder_dims[stack], cfg.num_heads[stack], cfg.ffn_dims[stack]
        reg, drop = cfg.regularise, cfg.dropout
        self.weights = AttentionWeights(dim, heads, cfg, reg)
        self.ff1 = FeedForward(dim, ffn * 3 // 4, drop, clock, reg)
        self.nla = NonlinAttention(dim, reg)
        self.sa1 = SelfAttention(dim, heads, cfg.value_head_dim)
        self.conv1 = ConvModule(dim, cfg.conv_kernels[stack], clock, reg)
        self.ff2 = FeedForward(dim, ffn, drop, clock, reg)
        self.mid_bypass = Bypass(dim, clock)
        self.sa2 = SelfAttention(dim, heads, cfg.value_head_dim)
        self.conv2 = ConvModule(dim, cfg.conv_kernels[stack], clock, reg)
        self.ff3 = FeedForward(dim, ffn * 5 // 4, drop, clock, reg)
        self.norm = BiasNorm(dim)
        self.out_bypass = Bypass(dim, clock)
        self.clock = clock

    def _keep(self, x: torch.Tensor) -> torch.Tensor | float:
        """Train mode: a per-cut 0/1 factor that skips a module with the scheduled MODULE_SKIP rate."""
        rate = self.clock.value(MODULE_SKIP) if self.training else 0.0
        if rate <= 0.0:
            return 1.0
        return (torch.rand(x.shape[0], 1, 1, device=x.device) >= rate).to(x.dtype)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x_in = x
        weights = self.weights(x, mask)
        x = x + self.ff1(x, mask)
        x = x + self._keep(x) * self.nla(x, weights, mask)
        x = x + self.sa1(x, weights)
        x = x + self._keep(x) * self.conv1(x, mask)
        x = x + self.ff2(x, mask)
        x = self.mid_bypass(x_in, x)
        x = x + self.sa2(x, weights)
        x = x + self._keep(x) * self.conv2(x, mask)
        x = x + self.ff3(x, mask)
        x = self.out_bypass(x_in, self.norm(x))
        return x * mask[..., None]
