"""The extraction job: plan, prepare the store, run one dask task per shard that is not committed yet."""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mt2kd.cuts import check_manifests
from mt2kd.errors import FingerprintMismatchError, TooManyFailuresError
from mt2kd.extract._config import ExtractConfig
from mt2kd.extract._plan import Plan, ShardTask, make_plan
from mt2kd.extract._progress import ExtractSummary, Progress, failures_hint
from mt2kd.extract._shard import ALREADY_COMMITTED, LOCKED, ShardResult, ShardSettings
from mt2kd.store import TeacherSpec, check_store_path, open_or_create, shard_name

if TYPE_CHECKING:
    from mt2kd.store import TeacherStore

# version of the run description kept in the store attrs, so that a store planned by another version cannot be
# resumed with today's plan. 1 closed a shard when the next cut would overflow it; 2: shards of equal audio,
# cuts in manifest order; 3: shards of equal audio, cuts longest first
RUN_FORMAT = 3
RANDOM_NOTE = "NOTE: random-weight teacher checkpoints: the outputs are for tests and demos, not real labels."


def plan_fingerprint(plan: Plan) -> str:
    """Hash of which cut IDs sit in which shard: a rerun may resume only the same plan."""
    h = hashlib.sha256()
    for shard in plan.shards:
        h.update(json.dumps([shard.shard_id, shard.cut_ids]).encode())
    return h.hexdigest()[:16]


def teacher_specs(config: ExtractConfig) -> dict[str, TeacherSpec]:
    """Specs with fingerprints, each teacher loaded here and freed (dry runs only).

    The teachers are not moved to a device: a spec does not depend on it, and a bf16 or fp16 teacher refuses
    the CPU, so a dry run of a CUDA run's config would fail here.
    """
    from mt2kd.extract._teacher import load_teacher

    specs = {}
    for teacher in config.teachers:  # the options win over --precision, as in the workers (load_teachers)
        spec = load_teacher(teacher.name, teacher.checkpoint, **{"precision": config.precision, **teacher.options}).spec
        specs[spec.name] = spec
    return specs


def store_attrs(config: ExtractConfig, plan: Plan, specs: Mapping[str, TeacherSpec], random: bool
                ) -> dict[str, Any]:
    whisper = specs.get("whisper")
    return {
        "run_format": RUN_FORMAT,
        "run": config.to_dict(),
        "random_teachers": random,
        "teachers": {n: {"fingerprint": s.fingerprint, "config": s.config} for n, s in specs.items()},
        "whisper": None if whisper is None else {k: whisper.config.get(k) for k in ("mode", "layer", "stack")},
        "plan": {"fingerprint": plan_fingerprint(plan), "num_shards": len(plan.shards), "num_cuts": plan.num_cuts,
                 "audio_hours": plan.audio_hours, "shard_hours": config.shard_hours},
    }


def prepare_store(config: ExtractConfig, plan: Plan, specs: Mapping[str, TeacherSpec], random: bool,
                  say: Callable[[str], None] = lambda text: None) -> TeacherStore:
    """Create the store, or open the existing one and check it was made by the same teachers and plan.

    With ``overwrite`` an existing store is deleted and made again, whether or not it could be resumed.
    """
    attrs = store_attrs(config, plan, specs, random)
    store, made = open_or_create(config.store, list(specs.values()), attrs, overwrite=config.overwrite, say=say)
    if made:
        return with_quantizers(store)
    check_resumable(store, specs, attrs["plan"]["fingerprint"], config)
    return store


def with_quantizers(store: TeacherStore) -> TeacherStore:
    """A new store with the quantiser of each codes teacher (``mvq=``) saved in it, so its codes decode."""
    from mt2kd.extract._codes import save_quantizers

    save_quantizers(store, list(store.specs.values()))
    return store


def check_resumable(store: TeacherStore, specs: Mapping[str, TeacherSpec], fingerprint: str,
                    config: ExtractConfig | None = None) -> None:
    """The store must have been made by this version's plan, these teachers and this plan; else say how it differs.

    With ``config`` (this run's), a refusal sets the values the store recorded of its run beside this run's.
    """
    stored = store.attrs.get("run") if config is not None else None
    made_by = store.attrs.get("run_format")
    if made_by != RUN_FORMAT:
        raise FingerprintMismatchError(f"{store.url} was planned by a version of mt2kd that splits cuts into shards "
                                       f"differently (run format {made_by}, now {RUN_FORMAT}); finish it with that "
                                       f"version, or pass --overwrite to start it again.")
    have = {n: s.fingerprint for n, s in store.specs.items()}
    want = {n: s.fingerprint for n, s in specs.items()}
    if have != want:
        raise FingerprintMismatchError(f"{store.url} was written by teachers {have}; this run must use the same "
                                       f"teachers and options to resume (or pass --overwrite). Got {want}"
                                       f"{compare_runs(stored, config, ('teachers', 'precision'))}.")
    old = store.attrs.get("plan", {}).get("fingerprint")
    if old != fingerprint:
        raise FingerprintMismatchError(f"{store.url} was planned from other cuts or --shard-hours (plan {old}); "
                                       f"resuming needs the same inputs (or --overwrite). Got plan {fingerprint}"
                                       f"{compare_runs(stored, config, ('cuts', 'shard_hours'))}.")


def compare_runs(stored: Mapping[str, Any] | None, config: ExtractConfig | None, fields: Sequence[str]) -> str:
    """``fields`` as the store's recorded run had them and as this run has them, as flags: '' without both."""
    if not isinstance(stored, Mapping) or config is None:
        return ""
    now = config.to_dict()
    return (f". The store's run had {_flags(stored, fields)}; this run has {_flags(now, fields)}"
            + ("" if any(stored.get(f) != now.get(f) for f in fields) else " (the same: did the inputs change?)"))


def _flags(run: Mapping[str, Any], fields: Sequence[str]) -> str:
    from mt2kd.extract._config import TeacherConfig

    shown = []
    for field in fields:
        value = run.get(field)
        if field == "teachers":
            shown += [f"--teacher {TeacherConfig.from_dict(t).to_text()}" for t in value or []]
        elif field == "cuts":
            shown += [f"--cuts {c}" for c in value or []]
        else:
            shown.append(f"--{field.replace('_', '-')} {value}")
    return " ".join(shown)


def extract(config: ExtractConfig, echo: Callable[[str], None] | None = None, progress: bool = True
            ) -> ExtractSummary:
    """Run the extraction job that ``mt2kd extract`` runs; returns what it did.

    Examples
    --------
    >>> from mt2kd.extract import ExtractConfig, TeacherConfig, extract  # doctest: +SKIP
    >>> config = ExtractConfig(cuts=("cuts.jsonl.gz",), store="labels.zarr",
    ...                        teachers=(TeacherConfig.parse("beats=beats.pt"),), workers=2)
    >>> extract(config).num_failures
    0
    """
    say = echo or (lambda text: print(text, file=sys.stderr))
    start = time.monotonic()
    config = config.with_absolute_paths()  # the workers' working directory need not be ours
    from mt2kd.extract._tiny import checkpoint_is_random

    random = any(checkpoint_is_random(t.checkpoint) for t in config.teachers)
    if random:
        say(RANDOM_NOTE)
    if config.dry_run:
        return dry_run(config, random, say, start)
    return run_job(config, random, say, progress, start)


def dry_run(config: ExtractConfig, random: bool, say: Callable[[str], None], start: float) -> ExtractSummary:
    """Print the plan (cuts, shards, bytes each teacher will write, workers) and write nothing."""
    from mt2kd.extract._cluster import describe_workers

    plan = make_plan(config.cuts, config.shard_hours)
    specs = teacher_specs(config)
    random = random_teachers(random, specs, say)
    lines = [*plan.describe(specs), ("Workers", describe_workers(config))]
    say("\n".join(f"{k:<16}: {v}" for k, v in lines))
    return ExtractSummary(**plan_summary(config, plan, random), num_shards_skipped=0, num_shards_written=0,
                          num_failures=0, seconds=time.monotonic() - start, dry_run=True)


def run_job(config: ExtractConfig, random: bool, say: Callable[[str], None], progress: bool, start: float
        ) -> ExtractSummary:
    """The job itself: workers start while the plan is read, then one task per shard not yet committed."""
    check_manifests(config.cuts)
    check_store_path(config.store)
    if config.is_local:  # the workers will read the checkpoints here: a missing one fails now, not in each worker
        from mt2kd.extract._teacher import check_checkpoint, check_teacher_name

        for teacher in config.teachers:
            check_teacher_name(teacher.name)
            check_checkpoint(teacher.name, teacher.checkpoint)
    from mt2kd.extract._cluster import check_jobs_submitted, check_local_device, open_client, prestart_local_workers

    check_local_device(config)

    prestart_local_workers(config)  # first: the workers' imports take longest

    # the manifests are read on a thread while the workers start and load their teachers (or, on SLURM,
    # while the jobs wait in the queue); a bad manifest still stops the run before any shard starts
    stop = threading.Event()  # a failure or Ctrl-C must not wait for the rest of the manifests to be read
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mt2kd-plan") as pool:
        planned = pool.submit(make_plan, config.cuts, config.shard_hours, stop)
        try:
            with open_client(config) as client, teachers_released(client, config):
                resources = start_workers(client, config, say)
                asked = ask_specs(client, resources)
                # a bad manifest shows as soon as it is read, not once the workers are out of the queue
                wait_done_or_failed([planned, asked], check=once(lambda: check_jobs_submitted(client), say))
                plan = planned.result()
                specs = {name: TeacherSpec.from_dict(spec) for name, spec in asked.result().items()}
                random = random_teachers(random, specs, say)
                store = prepare_store(config, plan, specs, random, say)
                todo, retry = shards_to_run(store, plan, config.retry_failed)
                announce_resume(say, store, plan, retry, config.retry_failed)
                results = run_tasks(client, resources, config, plan, todo, progress, retry) if todo else []
                results = finish_locked(results, store, plan, say, lambda again: run_tasks(
                    client, resources, config, plan, again, progress, retry))
        except FailureLimitReached as e:
            stop.set()
            raise too_many_failures(e) from None
        except BaseException as e:
            stop.set()
            if isinstance(e, KeyboardInterrupt):  # the cluster is closed by now: what the store holds is final
                say(interrupted_text(config.store))
            raise
    summary = plan_summary(config, plan, random)
    store.refresh()  # the index as the workers left it: what the store holds now
    return ExtractSummary(**summary, num_shards_skipped=len(plan.shards) - len(todo),
                          num_shards_written=sum(r.status != ALREADY_COMMITTED for r in results),
                          num_failures=len({f[0] for r in results for f in r.failures}),
                          seconds=time.monotonic() - start, task_seconds=sum(r.seconds for r in results),
                          decode_wait=sum(r.waits.decode for r in results),
                          first_batch_wait=sum(r.waits.first_batch for r in results),
                          write_wait=sum(r.waits.write for r in results), num_shards_retried=len(retry),
                          num_failures_in_store=num_failed_cuts(store))


LOCKED_POLL_SECONDS = 2.0  # how often a run looks whether another run still holds shards it wants


def finish_locked(results: list[ShardResult], store: TeacherStore, plan: Plan, say: Callable[[str], None],
                  run: Callable[[list[ShardTask]], list[ShardResult]]) -> list[ShardResult]:
    """Wait for the shards another live run holds (the same command started twice); write those it let go.

    A shard the other run commits counts as committed by it; one whose lock
    is released uncommitted (that run failed or was stopped) or went stale
    (it died) is written by this run, with ``run``.
    """
    while True:
        locked = {r.shard_id: r for r in results if r.status == LOCKED}
        if not locked:
            return results
        names = {shard_name(i) for i in locked}
        first = next(iter(locked.values())).message
        say(f"{len(locked)} shard(s) are being written by another extraction process ({first}); waiting until it "
            f"commits them or lets them go.")
        while any(w["alive"] and w["shard"] in names for w in store.writers()):
            time.sleep(LOCKED_POLL_SECONDS)
        store.refresh()
        again = [s for s in plan.shards if s.shard_id in locked and not store.is_committed(s.shard_id)]
        theirs = [ShardResult(i, ALREADY_COMMITTED, 0, (), r.audio_seconds, "committed by another process")
                  for i, r in locked.items() if store.is_committed(i)]
        results = [r for r in results if r.status != LOCKED] + theirs + (run(again) if again else [])


def interrupted_text(store_url: str) -> str:
    """The one line a run stopped by Ctrl-C prints: what it leaves committed, and how to go on."""
    from mt2kd.errors import StoreError
    from mt2kd.store import TeacherStore

    try:
        committed = len(TeacherStore.open(store_url).shards)
    except (StoreError, OSError):  # interrupted before the store was made
        committed = 0
    return f"interrupted: {committed} shards committed; rerun the same command to resume."


def num_failed_cuts(store: TeacherStore, shards: Collection[str] | None = None) -> int:
    """Distinct cuts with a recorded failure in the store's committed shards (or in ``shards`` of them)."""
    return len({f["cut_id"] for f in store.failures() if shards is None or f["shard"] in shards})


def shards_to_run(store: TeacherStore, plan: Plan, retry_failed: bool) -> tuple[list[ShardTask], frozenset[int]]:
    """The shards this run writes: those not committed, and with ``retry_failed`` those holding failures.

    Returns them in plan order and the IDs of the committed ones among them (written again with ``replace``).
    """
    with_failures = {f["shard"] for f in store.failures()} if retry_failed else set()
    retry = frozenset(s.shard_id for s in plan.shards if shard_name(s.shard_id) in with_failures)
    todo = [s for s in plan.shards if s.shard_id in retry or not store.is_committed(s.shard_id)]
    return todo, retry


def announce_resume(say: Callable[[str], None], store: TeacherStore, plan: Plan, retry: frozenset[int],
                    retry_failed: bool) -> None:
    """On a store that already has committed shards: how many, and the failed cuts they hold."""
    if not store.shards:
        return
    failed = num_failed_cuts(store)
    text = f"resuming {store.url}: {len(store.shards)} of {len(plan.shards)} shards committed"
    if retry_failed:
        text += (f", {failed} failed cuts recorded in them; --retry-failed recomputes the {len(retry)} shards "
                 f"that hold them")
    elif failed:
        text += (f", holding {failed} failed cuts ({failures_hint(store.url)}); these stay as they are: once "
                 f"their cause is fixed, rerun with --retry-failed to recompute their shards")
    say(text + ".")


def random_teachers(marked: bool, specs: Mapping[str, TeacherSpec], say: Callable[[str], None]) -> bool:
    """Whether any teacher has random weights: a checkpoint's marker file (``marked``) or a loaded teacher's flag.

    Every teacher loader reports ``random_init`` in its spec's config (read from the checkpoint itself), so a
    tiny checkpoint copied away from its marker file still counts. Prints the note if only the flags tell.
    """
    flagged = sorted(name for name, spec in specs.items() if spec.config.get("random_init"))
    if flagged and not marked:
        say(f"{RANDOM_NOTE} ({', '.join(flagged)})")
    return marked or bool(flagged)


def plan_summary(config: ExtractConfig, plan: Plan, random: bool) -> dict[str, Any]:
    return dict(store=config.store, num_cuts=plan.num_cuts, num_shards=len(plan.shards),
                audio_hours=plan.audio_hours, random_teachers=random)


def start_workers(client: Any, config: ExtractConfig, say: Callable[[str], None]) -> dict[str, int] | None:
    """Load the teachers into every worker (plugin); returns the resources a task must ask for."""
    from mt2kd.extract._cluster import (
        GPU_RESOURCE,
        dashboard_link,
        declares_gpus,
        starts_its_workers,
        worker_torch_threads,
    )
    from mt2kd.extract._plugin import TeacherPlugin, plugin_name, run_token

    link = dashboard_link(client)
    if link:
        say(f"dask dashboard: {link}")
    threads = worker_torch_threads(config, client)
    plugin = TeacherPlugin(config.teachers, config.precision, config.device, threads, starts_its_workers(config),
                           name=plugin_name(run_token(client)))
    client.register_plugin(plugin)
    return {GPU_RESOURCE: 1} if declares_gpus(client) else None


@contextlib.contextmanager
def teachers_released(client: Any, config: ExtractConfig) -> Iterator[None]:
    """On a running scheduler, remove the run's plugin (and so its teachers) from the workers at the end.

    Each run registers a plugin of its own (``plugin_name``); left behind,
    every run would add a set of teachers to each worker's memory. Workers
    the run started stop with it.
    """
    from mt2kd.extract._cluster import starts_its_workers

    try:
        yield
    finally:
        if not starts_its_workers(config):
            from mt2kd.extract._plugin import plugin_name, run_token

            with contextlib.suppress(Exception):  # the scheduler may be gone: nothing left to free then
                client.unregister_worker_plugin(plugin_name(run_token(client)))


def ask_specs(client: Any, resources: dict[str, int] | None) -> Any:
    """A future of the teachers' specs as a worker loaded them: the client never loads a model itself."""
    from mt2kd.extract._plugin import loaded_specs, plugin_name, run_token

    token = run_token(client)
    return client.submit(loaded_specs, plugin_name(token), resources=resources, pure=False,
                         key=f"mt2kd-teacher-specs-{token}")


def once(check: Callable[[], str | None], say: Callable[[str], None]) -> Callable[[], None]:
    """``check``, saying the first warning it returns (later ones are the same news)."""
    said: list[str] = []

    def checked() -> None:
        warning = check()
        if warning and not said:
            said.append(warning)
            say(warning)

    return checked


def wait_done_or_failed(futures: Sequence[Any], poll_seconds: float = 0.2,
                        check: Callable[[], None] = lambda: None) -> None:
    """Return once every future is done or one of them has failed (``result()`` then raises its error).

    ``check`` is called at each poll and may raise to stop the wait (jobs that will never start workers).
    """
    pending = list(futures)
    while pending:
        check()
        for future in list(pending):
            if future.done():
                if future.exception() is not None:
                    return
                pending.remove(future)
        if pending:
            time.sleep(poll_seconds)


def run_tasks(client: Any, resources: dict[str, int] | None, config: ExtractConfig, plan: Plan, todo: list[Any],
              progress: bool, retry: frozenset[int] = frozenset()) -> list[ShardResult]:
    """Submit one task per shard in ``todo`` and collect them, stopping past ``max_failures``.

    The shards in ``retry`` are committed already and are written again (``--retry-failed``).
    """
    from distributed import as_completed

    from mt2kd.extract._plugin import plugin_name, run_token
    from mt2kd.extract._shard import run_shard

    token = run_token(client)  # keys and plugin of this run only: another job may share the scheduler
    settings = ShardSettings(config.store, config.max_duration, config.decode_threads, config.prefetch_cuts,
                             config.events_log, owner=f"run-{uuid.uuid4().hex[:12]}", replace_shards=retry,
                             plugin=plugin_name(token))
    done_hours = plan.audio_hours - sum(s.audio_seconds for s in todo) / 3600
    futures = [client.submit(run_shard, s, settings, key=f"mt2kd-shard-{s.shard_id}-{token}", resources=resources,
                             pure=False) for s in todo]
    bar = Progress(plan.audio_hours, len(plan.shards), done_hours, len(plan.shards) - len(todo), progress)
    try:
        return collect(as_completed(futures), bar, config.max_failures, client, futures)
    except FailureLimitReached as e:
        e.store_url = config.store
        e.running = config.scheduler not in ("local", "slurm")
        raise
    finally:
        bar.close()


class FailureLimitReached(Exception):
    """More cuts failed than ``--max-failures`` allows; the job turns it into TooManyFailuresError.

    The error is raised once the cluster is closed, so that it can count what the store holds by then.
    """

    def __init__(self, max_failures: int, failed: set[str], num_in_flight: int) -> None:
        super().__init__(f"more than {max_failures} failed cuts")
        self.max_failures, self.failed, self.num_in_flight = max_failures, failed, num_in_flight
        self.store_url = ""
        self.running = False  # a scheduler the job did not start: its workers finish their shards


def collect(completed: Any, bar: Progress, max_failures: int, client: Any, futures: list[Any]) -> list[ShardResult]:
    results: list[ShardResult] = []
    failed: set[str] = set()
    for future in completed:
        result: ShardResult = future.result()
        results.append(result)
        failed.update(f[0] for f in result.failures)
        bar.shard_done(result.audio_seconds, len(failed))
        if 0 <= max_failures < len(failed):
            num_in_flight = sum(not f.done() for f in futures)
            client.cancel(futures)
            raise FailureLimitReached(max_failures, failed, num_in_flight)
    return results


def too_many_failures(limit: FailureLimitReached) -> TooManyFailuresError:
    """The error of a run stopped by ``--max-failures``, counting the failed cuts the store holds now."""
    from mt2kd.store import TeacherStore

    in_store = num_failed_cuts(TeacherStore.open(limit.store_url))
    text = (f"at most {limit.max_failures} failed cuts are allowed (--max-failures). Got {len(limit.failed)} in the "
            f"shards this run saw committed, e.g. {sorted(limit.failed)[:3]}; the store's committed shards now hold "
            f"{in_store} failed cuts in all ({failures_hint(limit.store_url)})")
    if limit.running and limit.num_in_flight:
        text += (f". {limit.num_in_flight} shards were still queued or being written on the scheduler's workers: "
                 f"those already started still commit and may add failures")
    return TooManyFailuresError(text + ". Committed shards stay committed; once the cause is fixed, rerun with "
                                       "--retry-failed to recompute the shards that hold failures.")
