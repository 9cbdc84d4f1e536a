"""Progress of a training run: periodic log lines, a live bar on a terminal, TensorBoard scalars.

Every ``log_every`` steps one plain log line shows the step out of the total,
each loss, the LR, audio hours per second, the share of wall time spent
waiting for the next batch (data-wait %, which tells at a glance whether the
loader keeps the GPU fed) and the ETA. Those lines are all a log file gets:
the live bar over steps is drawn only when the stream is a terminal, since a
redrawn bar written to a file or pipe piles up as one endless line of
carriage returns.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from mt2kd._console import is_terminal

log = logging.getLogger(__name__)

SECONDS_PER_HOUR = 3600.0
NOT_LOSSES = ("lr", "encoder_lr", "grad_norm")  # step values that are not losses: shown apart, logged under train/


def loss_keys(values: dict[str, float]) -> list[str]:
    """The losses among a step's values, in their order with ``total`` last (every stage names its own)."""
    keys = [k for k in values if k not in NOT_LOSSES and k != "total"]
    return keys + ["total"] if "total" in values else keys


def _has_console_handler(logger: logging.Logger) -> bool:
    return any(isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.stderr) for h in logger.handlers)


class Progress:
    """Accumulates timings and losses over ``log_every`` steps, then reports them (rank 0 only).

    ``stream`` (default stderr) gets the live bar when it is a terminal; the
    periodic lines always go through logging (logger ``mt2kd.train._progress``).
    """

    def __init__(self, cfg: Any, rank: int, start_step: int = 0, stream: TextIO | None = None) -> None:
        self.log_every = cfg.log_every
        self.num_steps_total = cfg.num_steps
        self.active = rank == 0
        self.run_start = time.perf_counter()
        self.start_step = start_step  # where this call began (resume): the ETA counts this call's pace only
        self.writer = None
        self.bar: Any = None
        self.num_cuts_dropped = 0  # set by the trainer: cuts left out so far because their audio was unreadable
        if self.active:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(cfg.exp_dir) / "tensorboard"))
            self.bar = self._open_bar(sys.stderr if stream is None else stream, start_step)
        self._reset()

    def _open_bar(self, stream: TextIO, start_step: int) -> Any:
        if not is_terminal(stream):
            return None
        from tqdm import tqdm

        return tqdm(total=self.num_steps_total, initial=start_step, unit="step", desc="train", file=stream,
                    dynamic_ncols=True, leave=False)

    def lines_above_bar(self) -> Any:
        """A context in which log lines print above the live bar instead of through it."""
        if self.bar is None:
            return contextlib.nullcontext()
        from tqdm.contrib.logging import logging_redirect_tqdm

        # only loggers that print to the terminal: redirecting one without a console handler would add one
        loggers = [lg for lg in (logging.getLogger(), logging.getLogger("mt2kd")) if _has_console_handler(lg)]
        return logging_redirect_tqdm(loggers=loggers) if loggers else contextlib.nullcontext()

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
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"total {values.get('total', 0.0):.4f}", refresh=False)
        if step % self.log_every == 0:
            self._report(step)

    def eta(self, step: int) -> str:
        """Time left at this call's average pace so far, as H:MM:SS."""
        done = step - self.start_step
        if done <= 0:
            return "?"
        left = (time.perf_counter() - self.run_start) / done * max(0, self.num_steps_total - step)
        return str(datetime.timedelta(seconds=round(left)))

    def _report(self, step: int) -> None:
        elapsed = max(time.perf_counter() - self.window_start, 1e-9)
        means = {k: v / self.num_steps for k, v in self.sums.items()}
        hours_per_s = self.audio_s / SECONDS_PER_HOUR / elapsed
        wait_pct = 100.0 * self.wait_s / elapsed
        if self.active:
            losses = " ".join(f"{k} {means[k]:.4f}" for k in loss_keys(means))
            dropped = f" | {self.num_cuts_dropped} cuts dropped (unreadable audio)" if self.num_cuts_dropped else ""
            log.info(
                "step %d/%d | %s | lr %.2e | %.3f audio h/s | data-wait %.1f%% | ETA %s%s",
                step, self.num_steps_total, losses, means.get("lr", 0.0), hours_per_s, wait_pct, self.eta(step),
                dropped,
            )
            self._write_scalars(step, means, hours_per_s, wait_pct)
        self._reset()

    def _write_scalars(self, step: int, means: dict[str, float], hours_per_s: float, wait_pct: float) -> None:
        assert self.writer is not None  # set whenever active
        for key, value in means.items():
            tag = f"train/{key}" if key in NOT_LOSSES else f"loss/{key}"
            self.writer.add_scalar(tag, value, step)
        self.writer.add_scalar("throughput/audio_hours_per_s", hours_per_s, step)
        self.writer.add_scalar("throughput/data_wait_pct", wait_pct, step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
