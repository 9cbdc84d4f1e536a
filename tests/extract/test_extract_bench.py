"""The extraction benchmark: its anchor runs the job's own batches, and a quick run prints every row."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mt2kd.tests._bench import load_bench

BENCH = Path(__file__).resolve().parents[2] / "bench" / "extract_bench.py"


def test_anchor_batches_are_the_tasks_batches(tmp_path: Path) -> None:
    bench = load_bench("extract_bench")
    manifest = bench.write_corpus(tmp_path, 2)
    audio = bench.decode_all(manifest)
    assert len(audio) == 88  # the 44 demo cuts twice, under new IDs
    batches = bench.job_batches(manifest, audio, 0.01, 20.0)
    ids = [a.cut_id for batch in batches for a in batch]
    assert sorted(ids) == sorted(audio)  # every cut once
    for batch in batches:
        durations = [a.duration for a in batch]
        assert len(batch) == 1 or sum(durations) <= 20.0
        assert durations == sorted(durations, reverse=True)  # longest first within a shard
    # shards of 36 s cannot share a batch: more batches than one global sort would make
    assert len(batches) > sum(a.duration for a in audio.values()) / 20.0


@pytest.mark.slow
def test_quick_bench_prints_anchor_baseline_and_job_rows() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--size", "tiny", "--repeat", "1", "--workers", "1",
                           "--shard-hours", "0.01", "--compare-spawn"], capture_output=True, text=True, check=True,
                          timeout=600)
    lines = done.stdout.splitlines()
    assert "RANDOM-weight teachers" in lines[0]
    waits = [line for line in lines if " teachers waited " in line]
    assert len(waits) == 1 and waits[0].startswith("job 1 worker(s): teachers waited ")
    assert waits[0].endswith("% for writing")
    rows = {line[:48].strip(): line[48:].split() for line in lines[2:] if line not in waits}
    names = sorted(rows)
    assert len(names) == 8 and names[0].startswith("baseline lhotse+HDF5, 1 process, ")  # the machine's cores
    assert names[1].startswith("forward only, ") and names[1].endswith(" torch thread(s) (anchor)")
    assert names[2:] == ["job 1 wkr(s) spawned: start to first shard", "job 1 wkr(s) spawned: wall",
                         "job 1 worker(s): first start-last commit", "job 1 worker(s): in-task sum",
                         "job 1 worker(s): start to first shard", "job 1 worker(s): wall"]
    anchor = rows[names[1]]
    assert anchor[2] == "1.00" and float(anchor[0]) > 0
    in_task = rows["job 1 worker(s): in-task sum"]
    assert float(in_task[2]) > 0 and in_task[1] == "-"
    assert float(rows["job 1 worker(s): wall"][3]) > 0  # throughput vs baseline
    assert float(rows["job 1 wkr(s) spawned: wall"][3]) > 0
    for name, wall in (("job 1 worker(s): start to first shard", "job 1 worker(s): wall"),
                       ("job 1 wkr(s) spawned: start to first shard", "job 1 wkr(s) spawned: wall")):
        start = rows[name]
        assert 0 < float(start[0]) < float(rows[wall][0]) and start[1:] == ["-", "-", "-"]  # within its own run
