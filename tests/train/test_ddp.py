"""Two CPU processes under torchrun (gloo): DDP training runs and checkpoints once."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mt2kd.train._checkpoint import list_checkpoints, read_checkpoint


@pytest.mark.slow
def test_torchrun_two_gloo_ranks(tmp_path, make_cuts, fill_store) -> None:
    cuts = make_cuts("utt", [0.5 + 0.1 * i for i in range(12)])
    manifest = tmp_path / "cuts.jsonl.gz"
    cuts.to_file(manifest)
    store = fill_store(tmp_path / "t.zarr", cuts)
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
