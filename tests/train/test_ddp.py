"""Two CPU processes under torchrun (gloo): DDP training runs and checkpoints once."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mt2kd.train._checkpoint import list_checkpoints, read_checkpoint


def _twelve_cuts(tmp_path, make_cuts, fill_store):
    """A manifest of 12 cuts of 0.5-1.6 s and a store with their targets."""
    cuts = make_cuts("utt", [0.5 + 0.1 * i for i in range(12)])
    manifest = tmp_path / "cuts.jsonl.gz"
    cuts.to_file(manifest)
    return manifest, fill_store(tmp_path / "t.zarr", cuts)


@pytest.mark.slow
def test_torchrun_two_gloo_ranks(tmp_path, make_cuts, fill_store) -> None:
    manifest, store = _twelve_cuts(tmp_path, make_cuts, fill_store)
    exp_dir = tmp_path / "exp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "mt2kd", "train", "kd", "--cuts", str(manifest), "--store", str(store), "--exp-dir", str(exp_dir),
        "--student", "tiny", "--max-duration", "2.0", "--num-buckets", "2", "--buffer-size", "100",
        "--num-workers", "0", "--num-steps", "6", "--checkpoint-every", "3", "--log-every", "3",
        "--device", "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    paths = list_checkpoints(exp_dir)
    assert [p.name for p in paths] == ["checkpoint-00000003.pt", "checkpoint-00000006.pt"]
    data = read_checkpoint(paths[-1])
    assert data["sampler"]["world_size"] == 2
    assert len(data["rng"]) == 2  # each rank resumes its own RNG states, not rank 0's
    assert "step 6" in result.stderr  # rank 0's progress line


DRIVER = """
import dataclasses, json, os, sys
import torch
from mt2kd.train import _config
from mt2kd.train._config import TrainConfig
from mt2kd.train._trainer import train

# dropout on: each rank draws its own masks, so a rank resumed with another rank's RNG states drifts
_config.STUDENT_PRESETS["tiny"] = dataclasses.replace(_config.STUDENT_PRESETS["tiny"], dropout=0.1)
torch.use_deterministic_algorithms(True)
manifest, store, exp_dir, num_steps, out = sys.argv[1:6]
history = train(TrainConfig(cuts=(manifest,), stores=(store,), exp_dir=exp_dir, student="tiny", max_duration=1.5,
                            num_buckets=2, buffer_size=100, num_workers=0, lr=3e-3, warmup_steps=10,
                            lr_steps=1000.0, checkpoint_every=1000, log_every=1000, device="cpu",
                            num_steps=int(num_steps)))
with open(f"{out}.rank{os.environ['RANK']}.json", "w") as f:
    json.dump([h["total"] for h in history], f)
"""


@pytest.mark.slow
def test_a_resumed_two_rank_run_with_dropout_matches_a_straight_one(tmp_path, make_cuts, fill_store) -> None:
    import json

    manifest, store = _twelve_cuts(tmp_path, make_cuts, fill_store)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(exp_dir: str, num_steps: int, out: str) -> None:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   str(driver), str(manifest), str(store), str(tmp_path / exp_dir), str(num_steps), str(tmp_path / out)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    run("a", 8, "straight")
    run("b", 4, "first")
    run("b", 8, "second")
    def losses(name: str, rank: int) -> list[float]:
        return json.loads((tmp_path / f"{name}.rank{rank}.json").read_text())

    for rank in (0, 1):
        assert losses("straight", rank) == losses("first", rank) + losses("second", rank), rank
