"""bench/student_bench.py: the batch it times and the table it prints."""

from __future__ import annotations

from mt2kd.tests._bench import load_bench


def test_batch_is_neighbouring_durations_filling_the_audio() -> None:
    bench = load_bench("student_bench")
    durations = bench.make_batch(100.0, seed=0)
    assert 100.0 <= sum(durations) < 100.0 + max(durations)
    assert durations == sorted(durations) and max(durations) - min(durations) < 5.0


def test_one_step_of_each_tiny_student_in_a_table() -> None:
    bench = load_bench("student_bench")
    durations = bench.make_batch(4.0, seed=0)
    rows = bench.run(bench.QUICK_PRESETS, 4.0, "cpu", 1, 0)
    assert [r.preset for r in rows] == ["tiny", "zipformer-tiny"]
    assert all(r.step_s > 0 and r.peak_bytes > 0 and r.audio_s == sum(durations) for r in rows)
    text = bench.table(rows)
    assert text.splitlines()[2].split()[:2] == ["tiny", "0.2"] and "1.00x" in text.splitlines()[2]
