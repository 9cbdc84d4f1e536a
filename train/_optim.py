"""Optimisers and learning-rate schedules of stage-1 training.

- ``adamw``: AdamW with linear warm-up from 0 and a step decay
  ``((s^2 + S^2) / S^2)^-1/4`` (``_runner.eden_factor``).
- ``scaled_adam``: :class:`ScaledAdam` (the Zipformer paper's optimiser,
  arXiv 2310.11230, Sec. 4) with the Eden schedule (:func:`eden_lr_factor`):
  warm-up from half the LR, decay in both steps and epochs.

Either works with either encoder; the optimiser's whole state (moments and
the clipping history) is in ``state_dict`` so a resumed run is exact. The
helpers take any stage's config with the fields ``optimizer``, ``lr``,
``weight_decay``, ``scaled_adam_lr``, ``warmup_steps``, ``lr_steps``,
``lr_epochs`` and ``clipping_scale`` (TrainConfig has them).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from typing import Any

import torch

from mt2kd.train._runner import eden_factor


def eden_lr_factor(step: int, epoch: int, warmup_steps: int, lr_steps: float, lr_epochs: float) -> float:
    """Eden: ``((s^2 + S^2)/S^2)^-1/4 * ((e^2 + E^2)/E^2)^-1/4``, times a warm-up from 0.5 to 1 over ``warmup_steps``.

    ``epoch`` counts from 0 (the sampler's epoch), so the first epoch has no epoch decay.

    Examples
    --------
    >>> eden_lr_factor(0, 0, 500, 7500.0, 3.5), round(eden_lr_factor(7500, 0, 500, 7500.0, 3.5), 4)
    (0.5, 0.8409)
    >>> round(eden_lr_factor(7500, 7, 500, 7500.0, 3.5) / eden_lr_factor(7500, 0, 500, 7500.0, 3.5), 4)
    0.6687
    """
    warmup = 1.0 if step >= warmup_steps else 0.5 + 0.5 * step / warmup_steps
    in_steps = ((step**2 + lr_steps**2) / lr_steps**2) ** -0.25
    in_epochs = ((epoch**2 + lr_epochs**2) / lr_epochs**2) ** -0.25
    return warmup * in_steps * in_epochs


def base_lr(cfg: Any) -> float:
    """The LR the schedule multiplies: ``lr`` for AdamW, ``scaled_adam_lr`` for ScaledAdam."""
    return float(cfg.scaled_adam_lr if cfg.optimizer == "scaled_adam" else cfg.lr)


def lr_factor(cfg: Any, step: int, epoch: int) -> float:
    """The schedule of ``cfg.optimizer`` at ``step`` in sampler epoch ``epoch``."""
    if cfg.optimizer == "scaled_adam":
        return eden_lr_factor(step, epoch, cfg.warmup_steps, cfg.lr_steps, cfg.lr_epochs)
    return eden_factor(step, cfg.warmup_steps, cfg.lr_steps)


def max_grad_norm(cfg: Any) -> float:
    """The global clip a stage applies before stepping: ``grad_clip`` for AdamW, none for ScaledAdam (it clips)."""
    return float(cfg.grad_clip) if cfg.optimizer == "adamw" else float("inf")


def make_optimizer(params: Iterable[torch.nn.Parameter], cfg: Any) -> torch.optim.Optimizer:
    """The optimiser ``cfg.optimizer`` names, at its base LR (the schedule multiplies it)."""
    if cfg.optimizer == "scaled_adam":
        return ScaledAdam(params, lr=cfg.scaled_adam_lr, clipping_scale=cfg.clipping_scale)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


class ScaledAdam(torch.optim.Optimizer):
    """Adam whose steps are relative to each parameter's scale, which is learned explicitly.

    For a tensor ``p`` with RMS ``r`` (held in ``[param_min_rms, param_max_rms]``):
    ``p += -lr * r * adam(g)`` (a step of the same relative size for a large
    or a small tensor) ``+ d * p``, where ``d = -lr * scale_lr_factor *
    adam(sum(g * p))`` learns the tensor's log-scale itself (``sum(g * p)`` is
    the loss's gradient with respect to it). Scalars take plain Adam
    steps of ``lr * scalar_lr_scale``, clamped to ``[-scalar_max, scalar_max]``.

    Before each step the gradient norm is measured scale-aware (each tensor's
    gradient times its RMS, as the update sees it) and clipped to
    ``clipping_scale`` times the median of the last ``clip_window`` such norms.

    Examples
    --------
    >>> w = torch.nn.Parameter(torch.ones(3, 3))
    >>> opt = ScaledAdam([w], lr=0.1)
    >>> w.grad = torch.ones(3, 3); opt.step(); round(float(w[0, 0]), 3)
    0.89
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.045, betas: tuple[float, float] = (0.9, 0.98),
                 eps: float = 1e-8, scale_lr_factor: float = 0.1, scalar_lr_scale: float = 0.1,
                 param_min_rms: float = 1e-5, param_max_rms: float = 3.0, scalar_max: float = 10.0,
                 clipping_scale: float = 2.0, clip_window: int = 128) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, scale_lr_factor=scale_lr_factor,
                        scalar_lr_scale=scalar_lr_scale, param_min_rms=param_min_rms,
                        param_max_rms=param_max_rms, scalar_max=scalar_max)
        super().__init__(params, defaults)
        self.clipping_scale, self.clip_window = clipping_scale, clip_window
        self.clip_history: list[float] = []  # scale-aware gradient norms of the last clip_window steps
        self.last_clip_factor = 1.0  # what the last step multiplied the gradients by (1: not clipped)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["clip_history"] = list(self.clip_history)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        self.clip_history = [float(v) for v in state_dict.pop("clip_history", [])]
        super().load_state_dict(state_dict)

    def _clip_factor(self) -> float:
        """Record this step's scale-aware gradient norm; the factor that brings it under the threshold."""
        squares = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                rms = 1.0 if p.numel() == 1 else p.detach().pow(2).mean().sqrt().clamp(
                    group["param_min_rms"], group["param_max_rms"])
                squares.append((p.grad.detach().float().pow(2).sum() * rms**2).reshape(()))
        if not squares:
            return 1.0
        norm = float(torch.stack(squares).sum().sqrt())
        self.clip_history = (self.clip_history + [norm])[-self.clip_window:]
        threshold = self.clipping_scale * statistics.median(self.clip_history)
        return threshold / norm if norm > threshold else 1.0

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.last_clip_factor = factor = self._clip_factor()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, p.grad.float() * factor, group)
        return loss

    def _update(self, p: torch.Tensor, grad: torch.Tensor, group: dict[str, Any]) -> None:
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(grad), torch.zeros_like(grad)
            if p.numel() > 1:
                state["scale_avg"], state["scale_avg_sq"] = grad.new_zeros(()), grad.new_zeros(())
        state["step"] += 1
        direction = _adam(grad, state["exp_avg"], state["exp_avg_sq"], state["step"], group)
        lr = group["lr"]
        if p.numel() == 1:
            p.add_(direction.to(p.dtype), alpha=-lr * group["scalar_lr_scale"])
            p.clamp_(-group["scalar_max"], group["scalar_max"])
            return
        raw_rms = p.float().pow(2).mean().sqrt()
        rms = raw_rms.clamp(group["param_min_rms"], group["param_max_rms"])
        log_scale_grad = (grad * p.float()).sum()
        d_log = -lr * group["scale_lr_factor"] * _adam(
            log_scale_grad, state["scale_avg"], state["scale_avg_sq"], state["step"], group)
        # the scale may not grow past param_max_rms nor shrink below param_min_rms
        d_log = torch.where((raw_rms >= group["param_max_rms"]) & (d_log > 0), 0.0, d_log)
        d_log = torch.where((raw_rms <= group["param_min_rms"]) & (d_log < 0), 0.0, d_log)
        p.add_((direction * (-lr * rms) + p.float() * d_log).to(p.dtype))


def _adam(grad: torch.Tensor, avg: torch.Tensor, avg_sq: torch.Tensor, step: int,
          group: dict[str, Any]) -> torch.Tensor:
    """Update the moments in place; the bias-corrected Adam direction ``m / (sqrt(v) + eps)``."""
    beta1, beta2 = group["betas"]
    avg.mul_(beta1).add_(grad, alpha=1 - beta1)
    avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    return (avg / (1 - beta1**step)) / ((avg_sq / (1 - beta2**step)).sqrt() + group["eps"])
