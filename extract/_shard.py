"""One task of the job: decode a shard's cuts, run the teachers, write the shard, commit it."""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from mt2kd.errors import ShardCommittedError, ShardLockedError, StoreError, ValidationError
from mt2kd.extract._audio import CutAudio, CutFailure, batches, by_duration, prefetched
from mt2kd.extract._plan import ShardTask

if TYPE_CHECKING:
    from mt2kd.extract._teacher import Teacher
    from mt2kd.store import ShardWriter, TeacherStore

COMMITTED, ALREADY_COMMITTED, LOCKED = "committed", "already committed", "locked by another writer"
T = TypeVar("T")
WRITE_BEHIND_BATCHES = 2  # batches of outputs waiting for the writer thread before the teachers wait


@dataclasses.dataclass(frozen=True)
class ShardSettings:
    """What a task needs besides its shard: where to write and how to batch and decode."""

    store_url: str  # the store, opened in each task (stores pickle as their URL anyway)
    max_duration: float  # s of audio per teacher batch
    decode_threads: int  # background decoding threads
    prefetch_cuts: int  # decoded cuts kept ready ahead of the model
    events_log: str = ""  # JSON-lines file of shard starts and commits ("" for none)
    # the run's token, kept in each shard lock: a task that finds its shard locked by an earlier attempt of
    # this run (dask reruns the task of a lost worker) waits for that attempt instead of giving the shard up
    owner: str = ""
    replace_shards: frozenset[int] = frozenset()  # committed shards to write again (--retry-failed)
    plugin: str = ""  # the worker plugin holding this run's teachers (_plugin.plugin_name); "" for PLUGIN_NAME


@dataclasses.dataclass(frozen=True)
class Waits:
    """Seconds a task's teachers spent waiting instead of computing."""

    decode: float  # for decoded audio, in all
    first_batch: float  # of which for the first batch (the decode window starts empty)
    write: float  # for the writer, and for the last writes before the commit


@dataclasses.dataclass(frozen=True)
class ShardResult:
    """What a task reports back to the client."""

    shard_id: int
    status: str  # COMMITTED, ALREADY_COMMITTED or LOCKED
    num_cuts: int  # cuts with at least one teacher output
    failures: tuple[tuple[str, str | None, str], ...]  # (cut ID, teacher or None, reason)
    audio_seconds: float
    message: str = ""
    seconds: float = 0.0  # shard start to commit
    waits: Waits = dataclasses.field(default_factory=lambda: Waits(0.0, 0.0, 0.0))


def log_event(path: str, event: str, shard_id: int, **extra: float) -> None:
    """Append one line to the events log; small O_APPEND writes do not interleave."""
    if not path:
        return
    line = json.dumps({"event": event, "shard": shard_id, "pid": os.getpid(), "host": socket.gethostname(),
                       "time": time.time(), **extra}) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)


def run_shard(task: ShardTask, settings: ShardSettings) -> ShardResult:
    """The dask task: the worker's teachers (from its plugin) turn ``task`` into a committed shard."""
    from mt2kd.extract._plugin import PLUGIN_NAME, worker_store, worker_teachers

    plugin = settings.plugin or PLUGIN_NAME
    return write_shard(task, settings, worker_teachers(plugin), worker_store(settings.store_url, plugin))


def write_shard(task: ShardTask, settings: ShardSettings, teachers: Mapping[str, Teacher],
                store: TeacherStore | None = None) -> ShardResult:
    """Write one shard with ``teachers`` into ``store`` (else opened from the settings).

    A shard that another attempt committed or holds is not an error.
    """
    from mt2kd.store import TeacherStore

    store = store if store is not None else TeacherStore.open(settings.store_url, "a")
    log_event(settings.events_log, "start", task.shard_id)
    start = time.monotonic()
    failures: list[tuple[str, str | None, str]] = []
    try:
        replace = task.shard_id in settings.replace_shards
        with store.shard_writer(task.shard_id, replace=replace, owner=settings.owner) as writer:
            num_cuts, waits = fill_shard(writer, task, settings, teachers, failures)
            check_accounted(task, writer.cut_ids, failures)
    except ShardCommittedError as e:
        # a second run of this task (dask retry, or another process) got there first: same plan, same store
        return ShardResult(task.shard_id, ALREADY_COMMITTED, 0, (), task.audio_seconds, str(e))
    except ShardLockedError as e:
        return ShardResult(task.shard_id, LOCKED, 0, (), 0.0, str(e))
    seconds = time.monotonic() - start
    log_event(settings.events_log, "commit", task.shard_id, decode_wait=waits.decode,
              first_batch_wait=waits.first_batch, write_wait=waits.write)
    return ShardResult(task.shard_id, COMMITTED, num_cuts, tuple(failures), task.audio_seconds, seconds=seconds,
                       waits=waits)


def check_accounted(task: ShardTask, stored: Sequence[str], failures: Sequence[tuple[str, str | None, str]]
                    ) -> None:
    """Refuse to commit a shard unless each of its cuts was stored or recorded as failed (as a whole).

    A shard missing a cut would look complete: a rerun skips it and verify
    does not know the cut. Raised inside the writer's block, the attempt is
    discarded and the shard is done again by the next attempt or run.
    """
    accounted = set(stored).union(cut_id for cut_id, teacher, _ in failures if teacher is None)
    missing = [cut_id for cut_id in task.cut_ids if cut_id not in accounted]
    if missing:
        raise StoreError(f"shard {task.shard_id} must have each of its {len(task.cut_ids)} cuts stored or recorded "
                         f"as failed before it commits. Got {len(missing)} with neither, e.g. {missing[:3]}; "
                         f"not committed.")


def fill_shard(writer: ShardWriter, task: ShardTask, settings: ShardSettings, teachers: Mapping[str, Teacher],
               failures: list[tuple[str, str | None, str]]) -> tuple[int, Waits]:
    """Decode ahead, batch by duration, run every teacher, put each cut.

    Returns the cuts put and how long the teachers' thread waited for
    decoded audio and for the writer: what says whether ``--decode-threads``
    and the store keep up with the model.

    Three stages overlap: decoding threads fill the window ahead, the teachers
    run on the calling thread, and one write-behind thread validates,
    compresses and writes the previous batch's outputs. Only that thread
    touches ``writer`` and ``failures``, so their order is the batch order.
    """
    decoded = prefetched(by_duration(task.cuts), settings.decode_threads, settings.prefetch_cuts)
    ready = Waited(batches(decoded, settings.max_duration))
    with WriteBehind(WRITE_BEHIND_BATCHES) as behind:
        for batch, bad in ready:
            outputs = {name: run_teacher(teacher, batch) for name, teacher in teachers.items()}
            behind.submit(write_batch, writer, batch, bad, outputs, failures)
        return sum(behind.results()), Waits(ready.waited, ready.first or 0.0, behind.waited)


class Waited(Iterator[T]):
    """An iterator that adds up the seconds its consumer spends waiting in ``next()``.

    ``first`` is the wait for the first item alone: a task starts with an
    empty decode window, so that wait says nothing about whether the
    decoders keep up afterwards.
    """

    def __init__(self, items: Iterable[T]) -> None:
        self.items, self.waited = iter(items), 0.0
        self.first: float | None = None  # None until the first item was asked for

    def __next__(self) -> T:
        start = time.perf_counter()
        try:
            return next(self.items)
        finally:
            waited = time.perf_counter() - start
            self.waited += waited
            if self.first is None:
                self.first = waited


def write_batch(writer: ShardWriter, batch: Sequence[CutAudio], bad: Sequence[CutFailure],
                outputs: Mapping[str, list[np.ndarray | str]], failures: list[tuple[str, str | None, str]]) -> int:
    """Record the batch's decode failures, then put each cut's outputs; returns the cuts put."""
    for failure in bad:
        writer.record_failure(failure.cut_id, failure.reason)
        failures.append((failure.cut_id, None, failure.reason))
    return sum(put_cut(writer, cut, {name: out[i] for name, out in outputs.items()}, failures)
               for i, cut in enumerate(batch))


class WriteBehind:
    """One background thread running submitted calls in order, at most ``depth`` queued.

    ``submit`` blocks while ``depth`` calls wait, which bounds the outputs held
    in memory; the first exception of a call is raised again by ``submit`` or
    ``results``, and the calls still queued are dropped (the shard will not
    commit anyway).
    """

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mt2kd-write")
        self.pending: collections.deque[concurrent.futures.Future[int]] = collections.deque()
        self.done: list[int] = []
        self.waited = 0.0  # s the submitting thread spent blocked on the calls

    def __enter__(self) -> WriteBehind:
        return self

    def __exit__(self, *exc: object) -> None:
        for future in self.pending:
            future.cancel()
        self.pool.shutdown(wait=True)

    def submit(self, fn: Callable[..., int], *args: Any) -> None:
        self._collect(self.depth - 1)
        self.pending.append(self.pool.submit(fn, *args))

    def results(self) -> list[int]:
        self._collect(0)
        return self.done

    def _collect(self, keep: int) -> None:
        """Wait until at most ``keep`` calls are pending, counting the time blocked."""
        start = time.perf_counter()
        while len(self.pending) > keep:
            self.done.append(self.pending.popleft().result())
        self.waited += time.perf_counter() - start


def run_teacher(teacher: Teacher, batch: Sequence[CutAudio]) -> list[np.ndarray | str]:
    """The teacher's output per cut, or the reason it has none; a failing batch is retried cut by cut."""
    if not batch:
        return []
    try:
        return list(teacher.extract([c.samples for c in batch]))
    except Exception:  # noqa: BLE001 - find the cut that broke the batch; the others still get outputs
        pass  # retried below, out of this block: its traceback holds the failed forward's tensors (on a GPU,
        # the memory that a batch that ran out of it needs back for its cuts one by one)
    results: list[np.ndarray | str] = []
    for cut in batch:
        try:
            results.append(teacher.extract([cut.samples])[0])
        except Exception as e:  # noqa: BLE001 - recorded as this cut's failure
            results.append(f"teacher {teacher.name} failed: {type(e).__name__}: {str(e)[:300]}")
    return results


def output_problem(output: np.ndarray, kind: str = "frames") -> str | None:
    """Why a teacher's output of a cut cannot be stored, or None; a text (UTF-8 bytes) may be empty."""
    if kind == "text":
        return None
    if output.size == 0:
        return f"empty output (shape {list(output.shape)}): cut too short for one frame"
    num_bad = int(output.size - np.count_nonzero(np.isfinite(output)))
    return f"non-finite output: {num_bad} NaN/Inf values" if num_bad else None


def put_cut(writer: ShardWriter, cut: CutAudio, outputs: Mapping[str, np.ndarray | str],
            failures: list[tuple[str, str | None, str]]) -> int:
    """Put the good outputs of one cut and record each teacher's failure; 1 if anything was put.

    A cut that no teacher has an output of is one whole-cut failure (teacher
    None) whose reason names each teacher's: what verify takes as a cut that
    is absent from the store on purpose.
    """
    if not outputs:  # no teacher ran at all: not the cut's failure; left unaccounted, the shard will not commit
        return 0
    good: dict[str, np.ndarray] = {}
    problems: dict[str, str] = {}
    for name, output in outputs.items():
        problem = output if isinstance(output, str) else output_problem(output, writer.specs[name].kind)
        if problem is None and not isinstance(output, str):
            good[name] = output
        else:
            problems[name] = str(problem)
    while good:
        try:
            writer.put(cut.cut_id, good)
            break
        except ValidationError as e:  # e.g. beyond the float16 range: the store refuses it, we record why
            refused = refused_teacher(e, good)
            for name in [refused] if refused is not None else list(good):  # unnamed: the cut itself was refused
                problems[name] = f"output refused by the store: {e}"
                del good[name]
    if not good:
        reason = "no teacher output: " + "; ".join(f"{name}: {problems[name]}" for name in outputs)
        writer.record_failure(cut.cut_id, reason)
        failures.append((cut.cut_id, None, reason))
        return 0
    for name in (name for name in outputs if name in problems):
        writer.record_failure(cut.cut_id, problems[name], teacher=name)
        failures.append((cut.cut_id, name, problems[name]))
    return 1


def refused_teacher(error: ValidationError, names: Iterable[str]) -> str | None:
    """The teacher whose output the store refused, else None.

    The writer validates every output of a cut before it writes any, and
    its error's ``teacher`` is the teacher whose output it refused.
    """
    return error.teacher if error.teacher in set(names) else None


def result_dict(result: ShardResult) -> dict[str, Any]:
    return dataclasses.asdict(result)
