"""Where the tasks run: a LocalCluster here, a running scheduler, or SLURM jobs via dask-jobqueue."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from mt2kd.errors import ConfigError
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
# how a LocalCluster starts its worker processes on CPU: "forkserver" (default) or "spawn" (dask's default,
# and always on CUDA); a dask config key, so DASK_MT2KD__LOCAL_START_METHOD=spawn switches back
START_METHOD_KEY = "mt2kd.local-start-method"
START_METHODS = ("forkserver", "spawn")
# what every worker imports besides its teachers: dask's worker, the task and the store writer, lhotse
WORKER_IMPORTS = ("distributed", "mt2kd.extract._plugin", "mt2kd.extract._shard", "mt2kd.store._writer",
                  "lhotse.serialization")


DEFAULT_WORKERS = 2  # worker processes of a local CPU run, and SLURM jobs, when --workers is not given


def num_workers(config: ExtractConfig) -> int:
    """Workers to start: ``config.workers``, else one per visible GPU for a local ``cuda`` run, else 2.

    On a local ``cuda`` run each worker takes the GPU of its index (``worker_device``), so the default uses
    every GPU of the machine once; ``cuda:N`` names one GPU, and gets one worker.
    """
    if config.workers is not None:
        return config.workers
    if config.scheduler == "local" and config.device.startswith("cuda"):
        return visible_gpus() if config.device == "cuda" else 1
    return DEFAULT_WORKERS


def visible_gpus() -> int:
    """CUDA devices this process sees (torch counts them without setting CUDA up; 0 where there are none)."""
    import torch

    return int(torch.cuda.device_count())


def check_local_device(config: ExtractConfig) -> None:
    """A local run on ``cuda`` needs a GPU here: say so now, not after the workers failed to load their teachers."""
    if config.scheduler != "local" or not config.device.startswith("cuda"):
        return
    count = visible_gpus()
    index = int(config.device.split(":", 1)[1]) if ":" in config.device else 0
    if index >= count:
        seen = f"{count} CUDA device(s)" if count else "no CUDA device"
        raise ConfigError(f"device {config.device!r} must be a GPU this machine shows, for a local run. Got "
                          f"{seen} (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}). "
                          f"Run on a GPU node, or pass --device cpu.")


def describe_workers(config: ExtractConfig) -> str:
    """The dry run's line on where the tasks will run."""
    if config.scheduler == "local":
        workers = num_workers(config)
        if not workers:
            return "none: one per visible GPU, and this machine shows no CUDA device"
        per_gpu = ", one per visible GPU" if config.workers is None and config.device == "cuda" else ""
        return (f"{workers} local process(es) on {config.device}{per_gpu}, "
                f"{local_torch_threads(workers)} torch thread(s) each")
    if config.scheduler == "slurm":
        return (f"{num_workers(config)} SLURM job(s) of {config.slurm_cores} CPUs, "
                f"{slurm_workers_per_job(config)} worker(s) on {config.device} each")
    return f"those of the scheduler at {config.scheduler}"


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
        return local_torch_threads(num_workers(config))
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
    from mt2kd.extract._slurm import RecordingSLURMCluster as SLURMCluster

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
    import dask

    if config.scheduler == "local":
        workers = num_workers(config)
        threads = local_torch_threads(workers)
        resources = {GPU_RESOURCE: 1} if config.device.startswith("cuda") else None
        # a Ctrl-C while the cluster starts waits for it to be up, so that it is closed as a whole (cut short,
        # its half-started workers failed at exit with tracebacks of their own)
        with dask.config.set({"distributed.worker.multiprocessing-method": local_start_method(config)}), \
                _interrupt_deferred() as interrupted:
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=LOCAL_DASHBOARD, resources=resources,
                                   env={"OMP_NUM_THREADS": str(threads)})
        with cluster:
            if interrupted:
                raise KeyboardInterrupt
            with Client(cluster) as client:
                yield client
    elif config.scheduler == "slurm":
        from mt2kd.extract._slurm import check_submit_command, quiet_submit_errors

        with quiet_submit_errors(), make_slurm_cluster(config) as cluster, Client(cluster) as client:
            check_submit_command(cluster)
            cluster.scale(jobs=num_workers(config))
            yield client
    else:
        try:
            client = Client(config.scheduler)
        except OSError as e:  # refused, or no answer within distributed.comm.timeouts.connect
            raise ConfigError(f"--scheduler {config.scheduler} must be the address of a running dask scheduler. "
                              f"Got no connection: {e}") from e
        with client:
            yield client


def check_jobs_submitted(client: Client) -> str | None:
    """On SLURM, stop once every job's submission has failed: no worker would ever come. Elsewhere, nothing.

    Returns a warning when only some jobs were refused.
    """
    cluster = getattr(client, "cluster", None)
    if cluster is not None and hasattr(cluster, "job_cls"):
        from mt2kd.extract._slurm import check_submissions

        return check_submissions(cluster)
    return None


def local_start_method(config: ExtractConfig) -> str:
    """How LocalCluster workers start: ``mt2kd.local-start-method`` from dask's config, else a fork server.

    Workers that use CUDA are always spawned: the server's imports ask CUDA
    for its devices (speechbrain does at import), and a CUDA driver set up
    before a fork is unusable in the forked process. So are workers where
    the platform has no fork server.
    """
    import multiprocessing

    import dask

    method = str(dask.config.get(START_METHOD_KEY, default="forkserver"))
    if method not in START_METHODS:
        raise ConfigError(f"dask config {START_METHOD_KEY} must be one of {list(START_METHODS)}. Got {method!r}.")
    if config.device.startswith("cuda") or method not in multiprocessing.get_all_start_methods():
        return "spawn"
    return method


def prestart_local_workers(config: ExtractConfig) -> None:
    """Get a LocalCluster's workers going before anything else: the fork server starts importing now."""
    if config.scheduler == "local" and local_start_method(config) == "forkserver":
        start_fork_server(config, local_torch_threads(num_workers(config)))


def start_fork_server(config: ExtractConfig, torch_threads: int) -> None:
    """Start the fork server that LocalCluster's workers are forked from, having it import their modules once.

    A spawned worker imports torch, the teachers' libraries, lhotse and dask
    itself before it can load a checkpoint: about 2.4 s, paid by every
    worker at once, on the cores the scheduler is starting on. The fork
    server does it once, in the background, while the client reads the
    manifests and starts the scheduler; each worker forked from it starts
    with the modules in place and loads only its checkpoints
    (``bench/extract_bench.py --compare-spawn``).

    The server keeps the environment it started with, so ``OMP_NUM_THREADS``
    (read once, when OpenMP loads) is set for it here. A server that is
    already running (an earlier run in this process) is kept as it is.
    """
    import multiprocessing
    from multiprocessing import forkserver

    from mt2kd.extract import _preload
    from mt2kd.extract._teacher import teacher_imports

    modules = [*WORKER_IMPORTS, *teacher_imports([t.name for t in config.teachers])]
    # through our module: multiprocessing's own preload lets any error but ImportError kill the server
    multiprocessing.get_context("forkserver").set_forkserver_preload([_preload.__name__])
    with _environ(OMP_NUM_THREADS=str(torch_threads), **{_preload.ENV: ",".join(modules)}):
        forkserver.ensure_running()


@contextlib.contextmanager
def _interrupt_deferred() -> Iterator[list[int]]:
    """Hold the first Ctrl-C back until the block ends; the list yielded then holds the signal if one came.

    A second Ctrl-C is not held: it interrupts at once, as before the block
    (a start that hangs can still be stopped). Only in the main thread
    (elsewhere signals cannot be handled, and none is held back).
    """
    import signal
    import threading

    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return

    def hold(signum: int, frame: Any) -> None:
        caught.append(signum)
        signal.signal(signal.SIGINT, old)  # the next one goes through

    old = signal.signal(signal.SIGINT, hold)
    try:
        yield caught
    finally:
        signal.signal(signal.SIGINT, old)


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Set environment variables for the processes started inside the block, then restore them."""
    old = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def dashboard_link(client: Client) -> str | None:
    try:
        link = client.dashboard_link
    except (KeyError, AttributeError):  # no dashboard (bokeh missing, or disabled)
        return None
    return str(link) if link else None
