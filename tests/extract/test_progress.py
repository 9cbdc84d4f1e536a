"""Extraction progress: plain lines in logs, a live bar only on a terminal, and the final summary."""

from __future__ import annotations

import io

from mt2kd.extract._progress import ExtractSummary, Progress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_without_a_terminal_plain_lines_carry_hours_rate_eta_and_shards() -> None:
    log = io.StringIO()
    progress = Progress(total_hours=1.0, num_shards=4, done_hours=0.25, num_done=1, stream=log, interval=0.0)
    progress.shard_done(900.0, num_failures=2)
    progress.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 2  # one per shard (interval 0) and the closing one
    assert lines[0].startswith("extract: 0.5000/1.0000 audio h (50.0%), ")
    assert "shards 2/4, failed cuts 2" in lines[0] and " h/s, ETA " in lines[0]
    assert "ETA ?" not in lines[0]  # 0.25 h done by this run gives a rate and an ETA


def test_lines_are_throttled_to_the_interval() -> None:
    log = io.StringIO()
    progress = Progress(total_hours=1.0, num_shards=10, stream=log, interval=3600.0)
    for _ in range(9):
        progress.shard_done(360.0, num_failures=0)
    assert log.getvalue() == ""
    progress.close()
    assert log.getvalue().count("\n") == 1 and "shards 9/10" in log.getvalue()


def test_on_a_terminal_a_bar_is_redrawn_in_place() -> None:
    terminal = FakeTerminal()
    progress = Progress(total_hours=2.0, num_shards=2, stream=terminal)
    progress.shard_done(3600.0, num_failures=0)
    progress.close()
    drawn = terminal.getvalue()
    assert drawn.startswith("\rextract:") and "audio h" in drawn and "shards 1/2" in drawn
    assert "\nextract: " not in drawn  # no plain lines besides the bar


def test_disabled_progress_writes_nothing() -> None:
    for stream in (io.StringIO(), FakeTerminal()):
        progress = Progress(total_hours=1.0, num_shards=1, enabled=False, stream=stream, interval=0.0)
        progress.shard_done(3600.0, num_failures=0)
        progress.close()
        assert stream.getvalue() == ""


def test_summary_line_names_random_teachers_and_rate() -> None:
    summary = ExtractSummary(store="s.zarr", num_cuts=10, num_shards=3, num_shards_skipped=1, num_shards_written=2,
                             num_failures=1, audio_hours=0.5, seconds=60.0, random_teachers=True)
    line = summary.line()
    assert "2 shards written, 1 already committed" in line and "30.0 audio-s/s" in line
    assert line.endswith("[RANDOM teachers: outputs are not real labels]")


def test_summary_line_gives_the_command_that_lists_the_stored_failures() -> None:
    summary = ExtractSummary(store="/data/my labels.zarr", num_cuts=10, num_shards=3, num_shards_skipped=3,
                             num_shards_written=0, num_failures=0, audio_hours=0.5, seconds=1.0,
                             num_failures_in_store=2)
    line = summary.line()
    listed = "mt2kd store info '/data/my labels.zarr' lists them with their reasons"
    assert f"the store holds 2 failed cuts ({listed}" in line
