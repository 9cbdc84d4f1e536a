"""The commit benchmark runs at a tiny size and prints a row per fill level."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "commit_bench.py"


def test_quick_commit_bench_prints_every_level() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--shards", "20", "--cuts-per-shard", "5", "--repeat", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[2:]]
    assert [int(r[0]) for r in rows] == [0, 2, 10, 20]
    assert [int(r[1].replace(",", "")) for r in rows] == [0, 10, 50, 100]  # cuts in the store at each level
    assert all(float(r[2]) > 0 for r in rows)  # the anchor, per level
    assert all(float(r[3]) > 0 and float(r[5]) > 0 and float(r[4]) > 0 and float(r[6]) > 0 for r in rows)
    assert all(float(r[7]) > 0 and float(r[8]) > 0 for r in rows)  # the same commit without fsync
