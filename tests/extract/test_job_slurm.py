"""The SLURM path: the job script dask-jobqueue would submit (rendered, never submitted)."""

from __future__ import annotations

import re

import pytest

from mt2kd.extract._cluster import make_slurm_cluster
from mt2kd.extract import ExtractConfig, TeacherConfig


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # dask-jobqueue's own deprecated-config shims
def test_slurm_job_script_asks_for_one_gpu_worker_per_job() -> None:
    config = ExtractConfig(cuts=("c.jsonl.gz",), store="s", teachers=(TeacherConfig("beats", "b.pt"),),
                           scheduler="slurm", workers=4, device="cuda", slurm_queue="gpu", slurm_account="kd",
                           slurm_walltime="02:30:00", slurm_memory="48GB", slurm_cores=6, slurm_gpus=1,
                           slurm_job_extra=("--constraint=a100",))
    cluster = make_slurm_cluster(config)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    directives = re.findall(r"^#SBATCH (.+)$", script, flags=re.M)
    assert "-p gpu" in directives and "-A kd" in directives
    assert "-t 02:30:00" in directives and "--cpus-per-task=6" in directives
    assert any(d.startswith("--mem=") for d in directives)
    assert "--gres=gpu:1" in directives and "--constraint=a100" in directives
    command = script.strip().splitlines()[-1]
    assert "distributed.cli.dask_worker" in command or "dask worker" in command or "dask-worker" in command
    assert "--resources GPU=1" in command and "--nthreads 6" in command
    assert "export DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False" in script
    assert "--nworkers" not in command  # one worker per job: teachers load once per GPU
