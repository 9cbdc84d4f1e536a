"""The store benchmark runs end to end at a tiny size and reports every format."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "store_bench.py"
FORMATS = ("mt2kd-f16", "mt2kd-f32", "hdf5-f32", "hdf5-f16", "lilcom")
METRICS = ("bytes / audio hour", "write MiB/s", "get cuts/s", "get_many cuts/s", "loader cuts/s")


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
