"""Teachers that live on a dask worker: loaded once when the worker starts, freed when it stops."""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from distributed import WorkerPlugin

from mt2kd.extract._config import TeacherConfig

if TYPE_CHECKING:
    from distributed import Worker

    from mt2kd.extract._teacher import Teacher
    from mt2kd.store import TeacherStore

PLUGIN_NAME = "mt2kd-teachers"  # the name's prefix: each run registers its own plugin (plugin_name)
_STORES_LOCK = threading.Lock()  # tasks on several threads of one worker open a store once (the plugin pickles)


def run_token(client: Any) -> str:
    """A short token of the run's client, unique to the run: it names the run's plugin and task keys.

    Two jobs on one scheduler (``--scheduler tcp://...``) must neither
    replace each other's plugin (a worker would then run one job's shards
    with the other's teachers) nor share task keys (dask would hand one job
    the other's results). Each run opens its own client.
    """
    return hashlib.sha256(str(client.id).encode()).hexdigest()[:12]


def plugin_name(token: str) -> str:
    """The name of the plugin holding the teachers of the run with ``token``."""
    return f"{PLUGIN_NAME}-{token}"


def load_teachers(configs: Sequence[TeacherConfig], precision: str, device: str) -> dict[str, Teacher]:
    """Load each configured teacher (``precision`` unless its options name one) onto ``device``."""
    from mt2kd.extract._teacher import load_teacher, store_name

    teachers = {}
    for config in configs:
        options = {"precision": precision, **config.options}
        teachers[store_name(config.name, config.options)] = load_teacher(config.name, config.checkpoint,
                                                                         **options).to(device)
    return teachers


def worker_device(device: str, worker_name: Any) -> str:
    """``cuda`` where a worker sees several GPUs: the worker with index N takes GPU N (modulo the count).

    LocalCluster names its workers 0, 1, ...; a SLURM job with several
    workers (one per GPU) names them ``JOB-0``, ``JOB-1``, ...
    """
    if device != "cuda":
        return device
    import torch

    count = torch.cuda.device_count()
    index = worker_index(worker_name)
    if count > 1 and index is not None:
        return f"cuda:{index % count}"
    return device


def worker_index(worker_name: Any) -> int | None:
    """The worker's index among its siblings: its name if an int, else a trailing ``-N``."""
    if isinstance(worker_name, int):
        return worker_name
    tail = str(worker_name).rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


def hash_checkpoints(configs: Sequence[TeacherConfig]) -> None:
    """Compute (and so cache in this process) the digest of every checkpoint that can be read."""
    from mt2kd.extract._teacher import checkpoint_digest

    for config in configs:
        try:
            checkpoint_digest(config.checkpoint)
        except OSError:  # missing or unreadable: loading the teacher reports it, naming the teacher
            continue


WARMUP_SECONDS = 1.0  # s of quiet noise each teacher sees once at setup


def warm_up(teachers: dict[str, Teacher]) -> None:
    """One forward per teacher and the store's writer imports, paid at setup instead of in the first task."""
    import numpy as np

    from mt2kd.cuts import SAMPLE_RATE
    from mt2kd.store import ShardWriter  # noqa: F401 - zarr metadata and codecs load on first use

    noise = np.random.default_rng(0).normal(0, 0.01, int(WARMUP_SECONDS * SAMPLE_RATE)).astype(np.float32)
    for teacher in teachers.values():
        teacher.extract([noise])


class TeacherPlugin(WorkerPlugin):
    """Loads the run's teachers into a worker at setup; tasks find them in ``worker.plugins``.

    Examples
    --------
    >>> name = plugin_name(run_token(client))  # doctest: +SKIP
    >>> client.register_plugin(TeacherPlugin(config.teachers, "fp32", "cpu", 1, name=name))  # doctest: +SKIP
    """

    name = PLUGIN_NAME

    def __init__(self, configs: Sequence[TeacherConfig], precision: str, device: str, num_threads: int,
                 owns_worker: bool = False, name: str = PLUGIN_NAME) -> None:
        self.name = name  # dask keys a worker's plugins by it: one per run (plugin_name)
        self.configs = tuple(configs)
        self.precision, self.device, self.num_threads = precision, device, num_threads
        self.owns_worker = owns_worker  # the run started this worker (LocalCluster, SLURM), not someone else
        self.teachers: dict[str, Teacher] = {}
        self.stores: dict[str, TeacherStore] = {}  # by URL: opened by the run's first task here, then shared
        self.load_failure: tuple[type[Exception], str] | None = None  # why setup loaded no teachers: raised by tasks

    def setup(self, worker: Worker) -> None:
        import torch

        if self.owns_worker:  # the run stops this worker itself, on Ctrl-C too
            quiet_worker_shutdown()

        # workers share the machine's cores: without this each one starts a thread per core
        torch.set_num_threads(self.num_threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(self.num_threads))
        # the run asks one worker for the teachers' fingerprints before any shard starts: hash the checkpoints
        # while they load, not after (one that cannot be read is the loader's to report, naming its teacher)
        hashing = threading.Thread(target=hash_checkpoints, args=(self.configs,), name="mt2kd-hash", daemon=True)
        hashing.start()
        self.teachers = self.load(worker_device(self.device, worker.name), worker.name)
        hashing.join()
        if self.owns_worker:  # the worker ends with the run
            from mt2kd._process import skip_final_gc_at_exit

            skip_final_gc_at_exit()

    def load(self, device: str, worker_name: Any) -> dict[str, Teacher]:
        """Load and warm up each teacher; a failure is kept for the tasks to raise, and raised.

        On a worker that joins after the plugin was registered (always so on
        SLURM) dask only logs a failed setup and keeps the plugin: the run's
        tasks then raise this failure, naming the teacher and its checkpoint,
        instead of finding no teachers.
        """
        teachers: dict[str, Teacher] = {}
        for config in self.configs:
            try:
                loaded = load_teachers([config], self.precision, device)
                teachers.update(loaded)
                warm_up(loaded)
            except Exception as e:
                self.load_failure = load_failure(config, worker_name, e)  # its text only: the traceback holds
                raise  # the failed load's frames (and tensors)
        return teachers

    def teardown(self, worker: Worker) -> None:
        # let go of the dicts, never empty them: a closing worker removes its plugins before it waits for the
        # task it runs, and that task must keep its teachers to the end (it holds the models until it ends)
        self.teachers, self.stores = {}, {}
        gc.collect()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()


def quiet_worker_shutdown() -> None:
    """Leave Ctrl-C to the run, and drop the warnings of a worker closed while it runs a shard.

    A terminal sends Ctrl-C to every process of the run: each worker then
    printed a KeyboardInterrupt traceback, and the warning of each shard its
    closing cut short, although the run closes them itself when it stops.
    (Workers forked from the fork server ignore Ctrl-C from their start;
    this catches spawned ones, once their plugin is set up.)
    """
    import signal

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    log = logging.getLogger("distributed.worker.state_machine")
    if not any(isinstance(f, _CutShortShards) for f in log.filters):
        log.addFilter(_CutShortShards())
    log = logging.getLogger("distributed.worker")
    if not any(isinstance(f, _OurErrors) for f in log.filters):
        log.addFilter(_OurErrors())


class _OurErrors(logging.Filter):
    """Drops dask's 'Compute Failed' report (a dozen lines and a traceback) of a task that raised an mt2kd error.

    Such an error says what went wrong in one line (a full disk, a lock, a
    store made anew), and the run prints that line when it stops; other
    errors (bugs) keep their report.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        from mt2kd import errors

        if not str(record.msg).startswith("Compute Failed"):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        return not any(isinstance(a, errors.MT2KDError) or (isinstance(a, str) and a.lstrip("'\"").startswith(
            tuple(f"{name}(" for name in errors.__all__))) for a in args)


class _CutShortShards(logging.Filter):
    """Drops 'Async instruction ... ended with CancelledError': dask's note of a task a closing worker ended."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().endswith("ended with CancelledError")


def load_failure(config: TeacherConfig, worker_name: Any, error: Exception) -> tuple[type[Exception], str]:
    """The error a task raises for a teacher its worker could not load: the same class where it is ours."""
    from mt2kd import errors

    kind = type(error) if type(error).__module__ == errors.__name__ else errors.CheckpointError
    return kind, (f"worker {worker_name} could not load teacher {config.name!r} from {config.checkpoint!r}: "
                  f"{type(error).__name__}: {error}")


def _worker_plugin(name: str) -> TeacherPlugin:
    from distributed import get_worker

    plugin = get_worker().plugins.get(name)
    if isinstance(plugin, TeacherPlugin) and plugin.load_failure is not None:
        kind, message = plugin.load_failure
        raise kind(message)
    if not isinstance(plugin, TeacherPlugin) or not plugin.teachers:
        from mt2kd.errors import ConfigError

        raise ConfigError(f"a worker must have the {name} plugin registered before shard tasks run. Got none.")
    return plugin


def worker_store(url: str, plugin_name: str = PLUGIN_NAME) -> TeacherStore:
    """The store at ``url``, opened once per worker and run and shared by the tasks the worker runs.

    Opening reads every commit record, and the index of every cut grows
    with the store: reopened by each task, a long run paid for the whole
    store once per shard (``bench/commit_bench.py``). Kept open, each commit
    reads only the records committed since the last one.
    """
    from mt2kd.store import TeacherStore

    plugin = _worker_plugin(plugin_name)
    with _STORES_LOCK:
        if url not in plugin.stores:
            plugin.stores[url] = TeacherStore.open(url, "a")
        return plugin.stores[url]


def worker_teachers(plugin_name: str = PLUGIN_NAME) -> dict[str, Teacher]:
    """The teachers the plugin loaded into the worker running the current task (the task's own dict)."""
    import torch

    plugin = _worker_plugin(plugin_name)
    # OpenMP thread counts are per calling thread: setup ran on the worker's event loop, tasks run on
    # its executor thread, which would otherwise start OMP_NUM_THREADS threads and crowd the decoders
    torch.set_num_threads(plugin.num_threads)
    return dict(plugin.teachers)


def loaded_specs(plugin_name: str = PLUGIN_NAME) -> dict[str, dict[str, Any]]:
    """The store specs of the teachers this worker loaded (a task: the client asks one worker)."""
    return {name: teacher.spec.to_dict() for name, teacher in worker_teachers(plugin_name).items()}
