"""Training-time regularisers of the Zipformer: scheduled rates, activation balancing, whitening.

Every one of them acts in train mode only: at eval the balancer and the
whitener are the identity and no rate is drawn, so a trained model's outputs
are a plain function of its weights.

- :class:`Clock` holds the training step that the scheduled rates read
  (dropout, layer and module skipping, the bypass lower bound), so a run
  starts heavily regularised and settles; the trainer sets it each step.
- :class:`Balancer` is the identity in the forward pass; in the backward pass
  it adds a small gradient that pushes each channel's share of positive values
  and its mean absolute value into a range, so no channel dies (always
  negative before a Swoosh) or blows up. Only valid frames count.
- :class:`Whiten` is the identity in the forward pass; when the covariance of
  its input over valid frames is far from white (a few directions carry most
  of the energy), its backward pass adds the gradient of that excess, scaled
  to a small share of the incoming gradient's norm.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

Schedule = tuple[tuple[float, float], ...]  # (step, value) breakpoints, linear in between, flat outside

LAYER_SKIP: Schedule = ((0.0, 0.5), (4000.0, 0.05), (16000.0, 0.0))  # P(a layer is skipped for a cut)
MODULE_SKIP: Schedule = ((0.0, 0.2), (4000.0, 0.05), (16000.0, 0.0))  # P(a NLA/conv module is skipped)
BYPASS_MIN: Schedule = ((0.0, 0.9), (20000.0, 0.2))  # lower bound of each bypass weight (1: layer output only)
DROPOUT_START = 0.3  # dropout at step 0, falling linearly to the config's dropout at DROPOUT_SETTLED
DROPOUT_SETTLED = 20000.0  # step
REGULARISE_PROB = 0.25  # share of training steps on which a balancer or whitener computes its statistics


class Clock:
    """The training step as the scheduled rates see it (one object shared by a whole encoder).

    Examples
    --------
    >>> clock = Clock(scale=1.0); clock.step = 2000
    >>> round(clock.value(((0.0, 0.5), (4000.0, 0.05))), 3)
    0.275
    """

    def __init__(self, scale: float) -> None:
        self.step = 0
        self.scale = scale  # multiplies every breakpoint (tiny test runs use a short schedule)

    def value(self, schedule: Schedule) -> float:
        points = [(step * self.scale, v) for step, v in schedule]
        if self.step <= points[0][0]:
            return points[0][1]
        for (s0, v0), (s1, v1) in zip(points, points[1:]):
            if self.step <= s1:
                return v0 + (v1 - v0) * (self.step - s0) / (s1 - s0)
        return points[-1][1]


def _flat_valid(t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B, T, C]`` -> ``[N, C]`` rows of valid frames, in float32."""
    return t[mask].float()


class _BalanceGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, mask: torch.Tensor, limits: tuple[float, ...]) -> torch.Tensor:
        ctx.save_for_backward(x, mask)
        ctx.limits = limits
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        x, mask = ctx.saved_tensors
        min_pos, max_pos, min_abs, max_abs, scale = ctx.limits
        xv, gv = _flat_valid(x, mask), _flat_valid(grad, mask)
        if xv.shape[0] == 0:
            return grad, None, None
        positive, mean_abs = (xv > 0).float().mean(0), xv.abs().mean(0)
        up = (positive < min_pos).float() - (positive > max_pos).float()  # +1: the channel should rise
        grow = (mean_abs < min_abs).float() - (mean_abs > max_abs).float()  # +1: its magnitude should grow
        size = scale * gv.abs().mean(0)  # relative to the gradient the channel already gets
        extra = -(up + grow * torch.sign(x.float())) * size  # descent adds -grad: push the wanted way
        return grad + (extra * mask[..., None]).to(grad.dtype), None, None


class Balancer(nn.Module):
    """Keeps each channel's positive share in ``[min_positive, max_positive]``, mean |x| in ``[min_abs, max_abs]``."""

    def __init__(self, enabled: bool, min_positive: float = 0.05, max_positive: float = 0.95,
                 min_abs: float = 0.2, max_abs: float = 10.0, grad_scale: float = 0.04) -> None:
        super().__init__()
        self.enabled = enabled
        self.limits = (min_positive, max_positive, min_abs, max_abs, grad_scale)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.enabled and x.requires_grad) or torch.rand(()) >= REGULARISE_PROB:
            return x
        out: torch.Tensor = _BalanceGrad.apply(x, mask, self.limits)
        return out


def whiteness(x: torch.Tensor) -> torch.Tensor:
    """``C * tr(cov^2) / tr(cov)^2`` of the rows of ``x`` ``[N, C]``: 1 for white data, up to C for rank one.

    Examples
    --------
    >>> float(whiteness(torch.eye(4))) < 1.5, float(whiteness(torch.ones(8, 4) * torch.arange(8.)[:, None])) > 3.9
    (True, True)
    """
    centred = x - x.mean(0)
    cov = centred.T @ centred / max(1, x.shape[0])
    return x.shape[1] * (cov**2).sum() / (torch.diagonal(cov).sum() ** 2 + 1e-20)


class _WhitenGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, mask: torch.Tensor, limit: float, scale: float) -> torch.Tensor:
        ctx.save_for_backward(x, mask)
        ctx.limit, ctx.scale = limit, scale
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        x, mask = ctx.saved_tensors
        with torch.enable_grad():
            xv = _flat_valid(x.detach(), mask).requires_grad_()
            if xv.shape[0] < 2:
                return grad, None, None, None
            excess = whiteness(xv) - ctx.limit
            if excess <= 0:
                return grad, None, None, None
            (push,) = torch.autograd.grad(excess, xv)
        size = ctx.scale * _flat_valid(grad, mask).norm() / (push.norm() + 1e-20)
        extra = torch.zeros_like(grad)
        extra[mask] = (push * size).to(grad.dtype)
        return grad + extra, None, None, None


class Whiten(nn.Module):
    """Pushes the covariance of its input towards white while :func:`whiteness` exceeds ``limit``."""

    def __init__(self, enabled: bool, limit: float = 10.0, grad_scale: float = 0.01) -> None:
        super().__init__()
        self.enabled, self.limit, self.grad_scale = enabled, limit, grad_scale

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.enabled and x.requires_grad) or torch.rand(()) >= REGULARISE_PROB:
            return x
        out: torch.Tensor = _WhitenGrad.apply(x, mask, self.limit, self.grad_scale)
        return out
