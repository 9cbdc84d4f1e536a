"""Progress of a run in the units people think in: audio hours done, hours per second, ETA, shards."""

from __future__ import annotations

import dataclasses
import datetime
import shlex
import sys
import time
from typing import Any, TextIO

from mt2kd._console import is_terminal

SECONDS_PER_HOUR = 3600.0
WAIT_HINT_PERCENT = 10.0  # decoding waits past the first batches above this share of task time get a hint


def failures_hint(store: str) -> str:
    """The command that lists a store's failed cuts with their reasons, ready to paste."""
    return f"mt2kd store info {shlex.quote(store)} lists them with their reasons"


@dataclasses.dataclass(frozen=True)
class ExtractSummary:
    """What a run did; ``line()`` is the final summary printed by the CLI."""

    store: str  # the store written
    num_cuts: int  # cuts in the plan
    num_shards: int  # shards in the plan
    num_shards_skipped: int  # committed before this run started (resume)
    num_shards_written: int  # committed by this run
    num_failures: int  # distinct cuts this run recorded a failure for
    audio_hours: float  # h of audio in the plan
    seconds: float  # wall time of the run
    dry_run: bool = False
    random_teachers: bool = False  # the store was built from random-weight checkpoints
    task_seconds: float = 0.0  # summed over the shards this run wrote: start to commit
    decode_wait: float = 0.0  # of which the teachers waited for decoded audio
    first_batch_wait: float = 0.0  # of that, for each shard's first batch (its decode window starts empty)
    write_wait: float = 0.0  # of which the teachers waited for the writer
    num_shards_retried: int = 0  # committed shards holding failures that this run wrote again (--retry-failed)
    num_failures_in_store: int = 0  # distinct failed cuts the store's committed shards hold at the end

    def line(self) -> str:
        if self.dry_run:
            return (f"dry run: {self.num_cuts:,} cuts, {self.audio_hours:.3f} h, {self.num_shards:,} shards; "
                    f"nothing written")
        rate = self.audio_hours / self.seconds if self.seconds > 0 else 0.0
        text = (f"done: {self.num_shards_written} shards written, {self.num_shards_skipped} already committed, "
                f"{self.num_shards} in the plan; {self.num_cuts:,} cuts, {self.audio_hours:.3f} h of audio, "
                f"{self.num_failures} failed cuts{self._retried()}; {self.seconds:.1f} s "
                f"({rate * SECONDS_PER_HOUR:.1f} audio-s/s){self._waits()} -> {self.store}{self._stored_failures()}")
        return text + ("  [RANDOM teachers: outputs are not real labels]" if self.random_teachers else "")

    def _retried(self) -> str:
        return f" ({self.num_shards_retried} shards with failures recomputed)" if self.num_shards_retried else ""

    def _stored_failures(self) -> str:
        if not self.num_failures_in_store:
            return ""
        return (f"; the store holds {self.num_failures_in_store} failed cuts ({failures_hint(self.store)}; once "
                f"their cause is fixed, rerun with --retry-failed to recompute their shards)")

    def _waits(self) -> str:
        """Where the teachers waited; decoding waits past the first batches over a tenth get a hint."""
        if self.task_seconds <= 0:
            return ""
        decode, first, write = (100 * w / self.task_seconds
                                for w in (self.decode_wait, self.first_batch_wait, self.write_wait))
        hint = "; raise --decode-threads" if decode - first > WAIT_HINT_PERCENT else ""
        return (f"; teachers waited {decode:.1f}% of task time for decoding ({first:.1f}% for first batches"
                f"{hint}), {write:.1f}% for writing")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Progress:
    """Audio hours done of the total, hours per second, ETA, shards done and failed cuts.

    On a terminal this is a live tqdm bar. Anywhere else (a log file, a pipe,
    a batch job's output) it is a plain line at most every ``interval``
    seconds and one at the end, since a redrawn bar written to a file piles
    up as one endless line of carriage returns.
    """

    def __init__(self, total_hours: float, num_shards: int, done_hours: float = 0.0, num_done: int = 0,
                 enabled: bool = True, stream: TextIO | None = None, interval: float = 30.0) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.total_hours, self.start_hours, self.done_hours = total_hours, done_hours, done_hours
        self.num_shards, self.num_done, self.num_failures = num_shards, num_done, 0
        self.enabled, self.interval = enabled, interval
        self.start = self.last_line = time.monotonic()
        self.bar: Any = None
        if enabled and is_terminal(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(total=round(total_hours, 6), initial=round(done_hours, 6), unit="h", desc="extract",
                            file=self.stream, dynamic_ncols=True,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.4f}/{total:.4f} audio h "
                                       "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")
            self._postfix()

    def shard_done(self, audio_seconds: float, num_failures: int) -> None:
        self.num_done += 1
        self.num_failures = num_failures
        self.done_hours = min(self.total_hours, self.done_hours + audio_seconds / SECONDS_PER_HOUR)
        if self.bar is not None:
            self._postfix()
            # rounded per-shard hours can sum past the total: clamp, or tqdm warns (and tests fail on warnings)
            step = round(audio_seconds / SECONDS_PER_HOUR, 6)
            self.bar.update(max(0.0, min(step, (self.bar.total or 0) - self.bar.n)))
        elif self.enabled and time.monotonic() - self.last_line >= self.interval:
            self._line()

    def _postfix(self) -> None:
        self.bar.set_postfix_str(f"shards {self.num_done}/{self.num_shards}, failed cuts {self.num_failures}")

    def line(self) -> str:
        """Where the run stands, in one plain line."""
        elapsed = self.seconds
        rate = (self.done_hours - self.start_hours) / elapsed if elapsed > 0 else 0.0
        left = self.total_hours - self.done_hours
        eta = str(datetime.timedelta(seconds=round(left / rate))) if rate > 0 else "?"
        share = 100.0 * self.done_hours / self.total_hours if self.total_hours > 0 else 100.0
        return (f"extract: {self.done_hours:.4f}/{self.total_hours:.4f} audio h ({share:.1f}%), "
                f"{rate:.4f} h/s, ETA {eta}, shards {self.num_done}/{self.num_shards}, "
                f"failed cuts {self.num_failures}")

    def _line(self) -> None:
        print(self.line(), file=self.stream, flush=True)
        self.last_line = time.monotonic()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            self._line()

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.start
