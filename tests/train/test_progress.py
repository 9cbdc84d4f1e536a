"""Training progress: plain periodic lines for logs, a live bar only on a terminal."""

from __future__ import annotations

import io
import logging

from mt2kd.train._config import TrainConfig
from mt2kd.train._progress import Progress

NUM_STEPS = 6
LOG_EVERY = 2


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(tmp_path, stream, caplog) -> list[str]:
    cfg = TrainConfig(exp_dir=str(tmp_path / "exp"), num_steps=NUM_STEPS, log_every=LOG_EVERY, student="tiny")
    progress = Progress(cfg, rank=0, stream=stream)
    with caplog.at_level(logging.INFO, logger="mt2kd.train._progress"), progress.lines_above_bar():
        for step in range(1, NUM_STEPS + 1):
            for _ in progress.timed([None]):
                progress.record(step, {"whisper": 1.0 / step, "total": 2.0 / step, "lr": 1e-3}, audio_s=3.0)
    progress.close()
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]


def test_without_a_terminal_only_periodic_plain_lines_are_written(tmp_path, caplog) -> None:
    stream = io.StringIO()  # what a log file or pipe is
    lines = _run(tmp_path, stream, caplog)
    assert [line.split(" |")[0] for line in lines] == ["step 2/6", "step 4/6", "step 6/6"]
    assert all("\r" not in line and "\n" not in line for line in lines)
    assert all("ETA " in line and "audio h/s" in line and "data-wait" in line for line in lines)
    assert lines[-1].endswith("ETA 0:00:00")
    assert "whisper 0.1833" in lines[-1]  # mean of 1/5 and 1/6 over the last window
    assert stream.getvalue() == ""  # no bar redraws piling up in the log


def test_on_a_terminal_a_live_bar_is_drawn_and_the_lines_still_come(tmp_path, caplog) -> None:
    terminal = FakeTerminal()
    lines = _run(tmp_path, terminal, caplog)
    assert len(lines) == NUM_STEPS // LOG_EVERY
    drawn = terminal.getvalue()
    assert drawn.startswith("\rtrain:") and f"0/{NUM_STEPS}" in drawn  # redrawn in place (tqdm throttles redraws)
    assert "step 2/6" not in drawn  # the lines go through logging, not through the bar


def test_rank_other_than_zero_stays_silent(tmp_path, caplog) -> None:
    cfg = TrainConfig(exp_dir=str(tmp_path / "exp"), num_steps=NUM_STEPS, log_every=1, student="tiny")
    terminal = FakeTerminal()
    progress = Progress(cfg, rank=1, stream=terminal)
    with caplog.at_level(logging.INFO, logger="mt2kd.train._progress"):
        progress.record(1, {"total": 1.0}, audio_s=1.0)
    progress.close()
    assert terminal.getvalue() == "" and not [r for r in caplog.records if r.getMessage().startswith("step ")]
    assert not (tmp_path / "exp" / "tensorboard").exists()
