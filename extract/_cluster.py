"""Where the tasks run: a LocalCluster here, a running scheduler, or SLURM jobs via dask-jobqueue."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from mt2kd.extract._config import ExtractConfig

if TYPE_CHECKING:
    from distributed import Client

GPU_RESOURCE = "GPU"  # the dask worker resource a shard task asks for on GPU clusters
LOCAL_DASHBOARD = ":0"  # any free port: several runs (or tests) on one machine never collide
WORKER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    # distributed sets MALLOC_TRIM_THRESHOLD_ for workers it spawns; any explicit value turns off glibc's
    # adaptive mmap threshold, so every large tensor is mmapped and faulted in afresh: forwards on CPU
    # ran about 1.3x slower. None leaves glibc's default.
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
}
PROFILER_ENV = "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"  # the same setting for workers started by SLURM


def local_torch_threads(workers: int) -> int:
    """Torch threads per LocalCluster worker: its share of the cores less one for decoding and writing.

    Measured on 2 cores (bench/extract_bench.py): one worker with 2 torch
    threads spent 1.8x its forward time in tasks, as OpenMP and the decoding
    threads fought over the cores; with 1 thread, 1.1x and 30% less wall time.
    """
    return max(1, (os.cpu_count() or 1) // workers - 1)


def starts_its_workers(config: ExtractConfig) -> bool:
    """Whether the run starts (and stops) its workers: a LocalCluster or SLURM jobs, not a running scheduler."""
    return config.scheduler in ("local", "slurm")


def slurm_workers_per_job(config: ExtractConfig) -> int:
    """One worker per GPU of a job (each loads the teachers onto its own GPU); one per job on CPU."""
    return config.slurm_gpus if config.device.startswith("cuda") else 1


def worker_torch_threads(config: ExtractConfig, client: Client) -> int:
    """Torch threads for a worker's teachers, so that the workers sharing a machine do not crowd it."""
    if config.scheduler == "local":
        return local_torch_threads(config.workers)
    if config.scheduler == "slurm":  # the job's cores shared out among its workers, one kept for decoding
        return max(1, config.slurm_cores // slurm_workers_per_job(config) - 1)
    # a running scheduler: a GPU worker runs one task at a time and may use its cores; a CPU worker runs
    # one task per thread, each on one core
    ncores = min(client.ncores().values(), default=1)
    return max(1, ncores - 1) if declares_gpus(client) else 1


def make_slurm_cluster(config: ExtractConfig) -> Any:
    """A dask-jobqueue SLURMCluster: one worker per GPU of a job, each running one shard at a time.

    A job asks SLURM for ``slurm_cores`` CPUs and ``slurm_gpus`` GPUs and
    starts one dask worker per GPU (one on CPU), each with one task thread
    and the resource ``GPU=1``. Nothing is submitted until the cluster is
    scaled; ``cluster.job_script()`` shows the script SLURM would run.

    Examples
    --------
    >>> print(make_slurm_cluster(config).job_script())  # doctest: +SKIP
    """
    from dask_jobqueue import SLURMCluster

    cuda = config.device.startswith("cuda")
    per_job = slurm_workers_per_job(config)
    directives = [f"--gres=gpu:{config.slurm_gpus}"] if cuda else []
    directives += list(config.slurm_job_extra)
    worker_args = ["--resources", f"{GPU_RESOURCE}=1"] if cuda else []
    return SLURMCluster(
        queue=config.slurm_queue or None,
        account=config.slurm_account or None,
        walltime=config.slurm_walltime,
        memory=config.slurm_memory,
        cores=per_job,  # dask's threads per job: one per worker, so a worker runs one shard at a time
        job_cpu=config.slurm_cores,  # what SLURM reserves: the workers' torch threads and decoders use it
        processes=per_job,
        job_extra_directives=directives,
        worker_extra_args=worker_args,
        job_name="mt2kd-extract",
        job_script_prologue=[f"export {PROFILER_ENV}=False"],
        scheduler_options={"dashboard_address": LOCAL_DASHBOARD},
    )


def declares_gpus(client: Client) -> bool:
    """Whether any worker offers the GPU resource (only then do tasks ask for it)."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    return any(GPU_RESOURCE in (w.get("resources") or {}) for w in workers.values())


@contextlib.contextmanager
def open_client(config: ExtractConfig) -> Iterator[Client]:
    """A client on the configured cluster, closed (and a cluster we started, stopped) on exit."""
    import dask
    from distributed import Client, LocalCluster

    # no sampling profiler on the workers (it walks every thread's stack under the GIL) and glibc's own
    # allocator tuning; nannies hand this config to the workers they start
    with dask.config.set(WORKER_CONFIG):
        yield from _clients(config, Client, LocalCluster)


def _clients(config: ExtractConfig, Client: Any, LocalCluster: Any) -> Iterator[Client]:
    if config.scheduler == "local":
        threads = local_torch_threads(config.workers)
        resources = {GPU_RESOURCE: 1} if config.device.startswith("cuda") else None
        cluster = LocalCluster(n_workers=config.workers, threads_per_worker=1, processes=True,
                               dashboard_address=LOCAL_DASHBOARD, resources=resources,
                               env={"OMP_NUM_THREADS": str(threads)})
        with cluster, Client(cluster) as client:
            yield client
    elif config.scheduler == "slurm":
        with make_slurm_cluster(config) as cluster, Client(cluster) as client:
            cluster.scale(jobs=config.workers)
            yield client
    else:
        with Client(config.scheduler) as client:
            yield client


def dashboard_link(client: Client) -> str | None:
    try:
        link = client.dashboard_link
    except (KeyError, AttributeError):  # no dashboard (bokeh missing, or disabled)
        return None
    return str(link) if link else None
