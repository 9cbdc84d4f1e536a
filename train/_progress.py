"""Progress of a training run: a one-line print and TensorBoard scalars.

The line shows the step, each loss, audio hours per second and the share of
wall time spent waiting for the next batch (data-wait %), which tells at a
glance whether the loader keeps the GPU fed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from mt2kd.train._config import TrainConfig

log = logging.getLogger(__name__)

SECONDS_PER_HOUR = 3600.0
LOSS_KEYS = ("whisper", "beats", "ecapa", "total")


class Progress:
    """Accumulates timings and losses over ``log_every`` steps, then reports them (rank 0 only)."""

    def __init__(self, cfg: TrainConfig, rank: int) -> None:
        self.log_every = cfg.log_every
        self.active = rank == 0
        self.writer = None
        if self.active:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(cfg.exp_dir) / "tensorboard"))
        self._reset()

    def _reset(self) -> None:
        self.window_start = time.perf_counter()
        self.wait_s = 0.0
        self.audio_s = 0.0
        self.sums: dict[str, float] = {}
        self.num_steps = 0

    def timed(self, batches: Iterable[Any]) -> Iterator[Any]:
        """Yield from ``batches``, adding the time spent inside ``next()`` to data-wait."""
        start = time.perf_counter()
        iterator = iter(batches)  # starting workers is waiting too
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self.wait_s += time.perf_counter() - start
            yield batch
            start = time.perf_counter()

    def record(self, step: int, values: dict[str, float], audio_s: float) -> None:
        self.audio_s += audio_s
        self.num_steps += 1
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        if step % self.log_every == 0:
            self._report(step)

    def _report(self, step: int) -> None:
        elapsed = max(time.perf_counter() - self.window_start, 1e-9)
        means = {k: v / self.num_steps for k, v in self.sums.items()}
        hours_per_s = self.audio_s / SECONDS_PER_HOUR / elapsed
        wait_pct = 100.0 * self.wait_s / elapsed
        if self.active:
            losses = " ".join(f"{k} {means[k]:.4f}" for k in LOSS_KEYS if k in means)
            log.info(
                "step %d | %s | lr %.2e | %.3f audio h/s | data-wait %.1f%%",
                step, losses, means.get("lr", 0.0), hours_per_s, wait_pct,
            )
            self._write_scalars(step, means, hours_per_s, wait_pct)
        self._reset()

    def _write_scalars(self, step: int, means: dict[str, float], hours_per_s: float, wait_pct: float) -> None:
        assert self.writer is not None  # set whenever active
        for key, value in means.items():
            tag = f"loss/{key}" if key in LOSS_KEYS else f"train/{key}"
            self.writer.add_scalar(tag, value, step)
        self.writer.add_scalar("throughput/audio_hours_per_s", hours_per_s, step)
        self.writer.add_scalar("throughput/data_wait_pct", wait_pct, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
