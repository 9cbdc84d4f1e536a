"""The SLURM path: the job script dask-jobqueue would submit (rendered, never submitted)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from mt2kd.extract import ExtractConfig, TeacherConfig
from mt2kd.extract._cluster import make_slurm_cluster
from mt2kd.tests.extract._corpus import DEMO


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
    assert "--resources GPU=1" in command
    assert "--nthreads 1" in command  # one shard at a time; the 6 CPUs are the torch threads' and decoders'
    assert "export DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False" in script
    assert "--nworkers" not in command  # one GPU, one worker: teachers load once per GPU


def _script(**fields: object) -> str:
    config = ExtractConfig(cuts=("c.jsonl.gz",), store="s", teachers=(TeacherConfig("beats", "b.pt"),),
                           scheduler="slurm", **fields)  # type: ignore[arg-type]
    cluster = make_slurm_cluster(config)
    try:
        return str(cluster.job_script())
    finally:
        cluster.close()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_job_with_several_gpus_runs_one_worker_per_gpu() -> None:
    script = _script(device="cuda", slurm_gpus=4, slurm_cores=16)
    directives = re.findall(r"^#SBATCH (.+)$", script, flags=re.M)
    assert "--gres=gpu:4" in directives and "--cpus-per-task=16" in directives
    command = script.strip().splitlines()[-1]
    assert "--nworkers 4" in command and "--nthreads 1" in command
    assert "--resources GPU=1" in command  # per worker: each takes one shard and one GPU at a time


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_cpu_job_runs_one_worker_one_shard_at_a_time() -> None:
    script = _script(device="cpu", slurm_gpus=2, slurm_cores=8)
    directives = re.findall(r"^#SBATCH (.+)$", script, flags=re.M)
    assert "--cpus-per-task=8" in directives and not any(d.startswith("--gres") for d in directives)
    command = script.strip().splitlines()[-1]
    assert "--nthreads 1" in command and "--nworkers" not in command and "--resources" not in command


def test_worker_torch_threads_share_the_cores_and_keep_one_for_decoding() -> None:
    import os

    from mt2kd.extract._cluster import worker_torch_threads

    def config(**fields: object) -> ExtractConfig:
        return ExtractConfig(cuts=("c.jsonl.gz",), store="s", teachers=(TeacherConfig("beats", "b.pt"),),
                             **fields)  # type: ignore[arg-type]

    class Client:  # what worker_torch_threads asks a running scheduler
        def __init__(self, ncores: dict[str, int], gpus: bool) -> None:
            self._ncores, self._gpus = ncores, gpus

        def ncores(self) -> dict[str, int]:
            return self._ncores

        def scheduler_info(self, **_: object) -> dict[str, object]:
            resources = {"GPU": 1} if self._gpus else {}
            return {"workers": {a: {"resources": resources} for a in self._ncores}}

    def client(ncores: dict[str, int], gpus: bool) -> Any:  # stands in for a distributed.Client
        return Client(ncores, gpus)

    cores = os.cpu_count() or 1
    assert worker_torch_threads(config(workers=1), client({}, False)) == max(1, cores - 1)
    assert worker_torch_threads(config(workers=cores), client({}, False)) == 1
    slurm = config(scheduler="slurm", device="cuda", slurm_gpus=4, slurm_cores=32)
    assert worker_torch_threads(slurm, client({}, True)) == 7
    assert worker_torch_threads(config(scheduler="slurm", slurm_cores=8), client({}, False)) == 7
    remote = config(scheduler="tcp://h:8786")
    assert worker_torch_threads(remote, client({"a": 8, "b": 12}, True)) == 7
    assert worker_torch_threads(remote, client({"a": 8}, False)) == 1  # 8 tasks at once, one core each


def test_workers_pick_their_gpu_by_index() -> None:
    from mt2kd.extract._plugin import worker_index

    assert worker_index(3) == 3
    assert worker_index("SLURMCluster-12-2") == 2  # the third worker of job 12
    assert worker_index("tcp://10.0.0.1:4000") is None
    assert worker_index("gpu-node") is None


def _slurm_run(tmp_path: Path) -> ExtractConfig:
    (tmp_path / "beats.pt").write_bytes(b"")
    return ExtractConfig(cuts=(str(DEMO / "speech_cuts.jsonl.gz"),), store=str(tmp_path / "store"),
                         teachers=(TeacherConfig("beats", str(tmp_path / "beats.pt")),), scheduler="slurm",
                         workers=2, slurm_queue="nope")


@pytest.mark.timeout(60)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_slurm_run_without_sbatch_stops_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mt2kd.errors import ConfigError
    from mt2kd.extract import extract

    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # nothing on it: no sbatch
    with pytest.raises(ConfigError, match="'sbatch', which must be on PATH"):
        extract(_slurm_run(tmp_path), echo=lambda _: None, progress=False)


@pytest.mark.timeout(60)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_slurm_run_whose_jobs_are_refused_stops_quoting_sbatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """dask-jobqueue only logs a failed submission: the run waited for workers forever."""
    import os

    from mt2kd.errors import ConfigError
    from mt2kd.extract import extract

    sbatch = tmp_path / "bin" / "sbatch"
    sbatch.parent.mkdir()
    sbatch.write_text("#!/bin/sh\necho 'sbatch: error: invalid partition specified: nope' >&2\nexit 1\n")
    sbatch.chmod(0o755)
    monkeypatch.setenv("PATH", f"{sbatch.parent}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(ConfigError, match=r"2 of 2 job\(s\) refused: 'sbatch' exited with code 1: "
                                          r"sbatch: error: invalid partition specified: nope"):
        extract(_slurm_run(tmp_path), echo=lambda _: None, progress=False)
    assert not [r for r in caplog.records if r.exc_info]  # no traceback logged for it


def test_some_jobs_refused_is_a_warning_said_once_and_all_refused_stops() -> None:
    from types import SimpleNamespace

    from mt2kd.errors import ConfigError
    from mt2kd.extract._job import once
    from mt2kd.extract._slurm import check_submissions

    def cluster(*errors: str | None) -> Any:
        return SimpleNamespace(workers={str(i): SimpleNamespace(submit_error=e) for i, e in enumerate(errors)})

    assert check_submissions(cluster(None, None)) is None and check_submissions(cluster()) is None
    some = cluster(None, "'sbatch' exited with code 1: QOSMaxSubmitJobPerUserLimit")
    said: list[str] = []
    check = once(lambda: check_submissions(some), said.append)
    check()
    check()
    assert said == ["warning: SLURM 1 of 2 job(s) refused: 'sbatch' exited with code 1: QOSMaxSubmitJobPerUserLimit; "
                    "the run goes on with the other jobs' workers."]
    with pytest.raises(ConfigError, match=r"Got 2 of 2 job\(s\) refused: no"):
        check_submissions(cluster("no", "no"))
