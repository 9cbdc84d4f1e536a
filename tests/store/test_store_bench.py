"""The store benchmark runs end to end at a tiny size and reports every format."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mt2kd.tests._bench import load_bench

BENCH = Path(__file__).resolve().parents[2] / "bench" / "store_bench.py"
FORMATS = ("mt2kd-f16", "mt2kd-f16-raw", "mt2kd-f32", "hdf5-f32", "hdf5-f16", "lilcom")
METRICS = ("bytes / audio hour", "write MiB/s", "get cuts/s", "get_many cuts/s", "get CPU ms/MiB", "loader cuts/s")


def test_quick_bench_prints_a_table_with_every_format(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--quick", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next(line for line in lines if line.startswith("metric"))
    assert header.split()[1:] == list(FORMATS)
    for metric in METRICS:
        row = next(line for line in lines if line.startswith(metric))
        cells = row[len(metric):].split()
        assert len(cells) >= len(FORMATS), row
        assert "-" not in cells[-len(FORMATS):], row  # every format measured
    # the anchor compares equal to itself; float16 HDF5 holds half the bytes of float32 HDF5
    ratios = next(line for line in lines if line.startswith("bytes vs hdf5-f32")).split()[-len(FORMATS):]
    assert ratios[FORMATS.index("hdf5-f32")] == "1.00x"
    assert abs(float(ratios[FORMATS.index("hdf5-f16")].rstrip("x")) - 0.5) < 0.03
    assert list(tmp_path.iterdir()) == []  # the benchmark cleans up after itself



def test_synthetic_durations_are_librispeech_like() -> None:
    common = load_bench("_common")
    durations = common.sample_durations(200.0, seed=3)
    assert durations.min() >= 1.0 and durations.max() <= 35.0
    assert abs(durations.mean() - 12.3) < 0.2
    assert abs(durations.sum() / 3600 - 200.0) < 2.0
    assert (durations > 30).any() and (durations < 3).any()  # both tails are there


def test_synthetic_frames_are_correlated_gaussian_with_per_dim_scale() -> None:
    import numpy as np

    common = load_bench("_common")
    assert common.num_stacked_frames(2.0) == 50 and common.num_stacked_frames(30.0) == 750
    corpus = common.make_whisper_corpus(0.02, seed=1, dim=64)
    assert [f.shape[0] for f in corpus.frames] == [common.num_stacked_frames(d) for d in corpus.durations]
    frames = np.concatenate(corpus.frames)
    assert frames.dtype == np.float32 and frames.shape[1] == 64
    lag1 = np.mean([np.corrcoef(f[1:, 0], f[:-1, 0])[0, 1] for f in corpus.frames])
    assert 0.7 < lag1 < 0.95  # neither white noise nor constant
    stds = frames.std(axis=0)
    assert stds.max() / np.median(stds) > 5  # a few loud dimensions, as real encoders have
