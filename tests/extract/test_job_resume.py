"""Killing and rerunning the job, a worker killed mid-shard, two jobs on one store at once (CLI, 2 local workers)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mt2kd.extract import ExtractConfig, TeacherConfig, extract
from mt2kd.extract._plan import make_plan
from mt2kd.store import TeacherStore
from mt2kd.tests.extract._corpus import DEMO

pytestmark = pytest.mark.slow  # each test runs the job two or three times (about 2 minutes on 2 cores)

DEMO_CUTS = (str(DEMO / "speech_cuts.jsonl.gz"), str(DEMO / "events_cuts.jsonl.gz"))
SHARD_HOURS = 0.002  # about 15 shards of the demo corpus: enough to kill in the middle
POLL_S = 0.05  # s between looks at the events log
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from mt2kd.extract import make_tiny_checkpoints

    return make_tiny_checkpoints(tmp_path_factory.mktemp("teachers"))


@pytest.fixture(scope="module")
def reference(tiny: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> TeacherStore:
    """An uninterrupted run of the same job."""
    config = ExtractConfig(cuts=DEMO_CUTS, store=str(tmp_path_factory.mktemp("ref") / "store"),
                           teachers=tuple(TeacherConfig(n, str(p)) for n, p in tiny.items()),
                           workers=2, max_duration=8.0, shard_hours=SHARD_HOURS)
    extract(config, progress=False)
    return TeacherStore.open(config.store)


def cli_args(tiny: dict[str, Path], store: Path, events: Path, shard_hours: float = SHARD_HOURS) -> list[str]:
    args = [sys.executable, "-m", "mt2kd", "extract", "--store", str(store), "--workers", "2",
            "--max-duration", "8", "--shard-hours", str(shard_hours), "--events-log", str(events)]
    args += [a for c in DEMO_CUTS for a in ("--cuts", c)]
    return args + [a for n, p in tiny.items() for a in ("--teacher", f"{n}={p}")]


def events_of(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def shards_with(events: list[dict[str, Any]], kind: str) -> set[int]:
    return {e["shard"] for e in events if e["event"] == kind}


def spawn(args: list[str], output: Path) -> subprocess.Popen[bytes]:
    # own process group: SIGKILL reaches the client, the scheduler and every worker, as on a killed SLURM job
    with open(output, "wb") as out:
        return subprocess.Popen(args, cwd=REPO.parent, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)


def assert_equal_stores(got: TeacherStore, want: TeacherStore) -> None:
    assert sorted(got.cut_ids()) == sorted(want.cut_ids())
    for cut_id in want.cut_ids():
        a, b = got.get(cut_id), want.get(cut_id)
        assert set(a) == set(b) and all(np.array_equal(a[t], b[t]) for t in b), cut_id


def test_sigkill_mid_run_then_rerun_recomputes_only_shards_in_flight(tiny: dict[str, Path], reference: TeacherStore,
                                                                     tmp_path: Path) -> None:
    store, first_log = tmp_path / "store", tmp_path / "first.jsonl"
    job = spawn(cli_args(tiny, store, first_log), tmp_path / "first.out")
    while not shards_with(events_of(first_log), "commit") and job.poll() is None:
        time.sleep(POLL_S)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    at_kill = events_of(first_log)
    in_flight = shards_with(at_kill, "start") - shards_with(at_kill, "commit")
    num_shards = len(make_plan(DEMO_CUTS, SHARD_HOURS).shards)
    assert 0 < len(shards_with(at_kill, "commit")) < num_shards, "the kill must land mid-run"

    second_log = tmp_path / "second.jsonl"
    rerun = subprocess.run(cli_args(tiny, store, second_log), cwd=REPO.parent, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    recomputed = shards_with(events_of(second_log), "start") & shards_with(at_kill, "start")
    assert len(recomputed) <= len(in_flight)
    assert not shards_with(events_of(second_log), "start") & shards_with(at_kill, "commit")
    resumed = TeacherStore.open(store)
    assert resumed.verify() == [] and len(resumed.shards) == num_shards
    assert_equal_stores(resumed, reference)


def test_two_jobs_on_one_store_lose_and_mix_nothing(tiny: dict[str, Path], reference: TeacherStore,
                                                    tmp_path: Path) -> None:
    store = tmp_path / "store"
    jobs = [spawn(cli_args(tiny, store, tmp_path / f"job{i}.jsonl"), tmp_path / f"job{i}.out") for i in range(2)]
    for job in jobs:
        job.wait()
    outputs = [(tmp_path / f"job{i}.out").read_text() for i in range(2)]
    for job, output in zip(jobs, outputs):
        # a job whose shard another job was writing stops with a clear lock error; it never corrupts
        assert job.returncode == 0 or "ShardLockedError" in output, output
    both = [shards_with(events_of(tmp_path / f"job{i}.jsonl"), "commit") for i in range(2)]
    assert not both[0] & both[1], "a shard committed twice"
    finish = subprocess.run(cli_args(tiny, store, tmp_path / "finish.jsonl"), cwd=REPO.parent,
                            capture_output=True, text=True)
    assert finish.returncode == 0, finish.stdout + finish.stderr
    result = TeacherStore.open(store)
    assert result.verify() == [] and len(result) == len(reference)
    assert_equal_stores(result, reference)


def test_a_worker_killed_mid_shard_has_its_task_rerun_and_the_job_completes(tiny: dict[str, Path],
                                                                            tmp_path: Path) -> None:
    """As when a SLURM job is preempted: the worker dies, its lock stays, dask reruns the task on another."""
    shard_hours = 0.01  # shards of about 36 s of audio (seconds of work each): the kill lands inside one
    want = ExtractConfig(cuts=DEMO_CUTS, store=str(tmp_path / "reference"), workers=2, max_duration=8.0,
                         teachers=tuple(TeacherConfig(n, str(p)) for n, p in tiny.items()), shard_hours=shard_hours)
    extract(want, progress=False)
    store, log = tmp_path / "store", tmp_path / "events.jsonl"
    job = spawn(cli_args(tiny, store, log, shard_hours), tmp_path / "job.out")
    victim: dict[str, Any] | None = None
    while victim is None and job.poll() is None:
        started = [e for e in events_of(log) if e["event"] == "start"]
        if started:
            victim = started[0]
            os.kill(victim["pid"], signal.SIGKILL)  # the worker process only; the client and the rest go on
        time.sleep(0.01)
    assert job.wait(timeout=300) == 0, (tmp_path / "job.out").read_text()
    assert victim is not None
    events = events_of(log)
    reruns = [e for e in events if e["shard"] == victim["shard"]]
    assert [e["event"] for e in reruns] == ["start", "start", "commit"]  # killed, then done by another worker
    assert reruns[2]["pid"] != victim["pid"]
    result = TeacherStore.open(store)
    assert result.verify() == [] and result.leftovers() == []  # the dead attempt and its lock were cleared
    assert_equal_stores(result, TeacherStore.open(want.store))


def test_two_jobs_on_one_running_scheduler_each_get_their_own_teachers(tiny: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    """Two jobs with other teacher options share a scheduler at once: no shard is written by the other's teachers."""
    import threading

    from distributed import Client, LocalCluster

    from mt2kd.extract import load_teacher

    layers = {"first": -1, "second": 0}
    outcome: dict[str, Any] = {}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        configs = {name: ExtractConfig(cuts=DEMO_CUTS, store=str(tmp_path / name), scheduler=cluster.scheduler_address,
                                       teachers=(TeacherConfig("whisper", str(tiny["whisper"]), {"layer": layer}),),
                                       max_duration=8.0, shard_hours=SHARD_HOURS)
                   for name, layer in layers.items()}

        def run(name: str) -> None:
            try:
                outcome[name] = extract(configs[name], progress=False, echo=lambda _: None)
            except BaseException as e:  # noqa: BLE001 - reported by the assertion below
                outcome[name] = e

        jobs = [threading.Thread(target=run, args=(name,)) for name in layers]
        for job in jobs:
            job.start()
            time.sleep(1.0)  # the second registers its plugin while the first runs
        for job in jobs:
            job.join(300)
        with Client(cluster) as client:  # each run removed its plugin: the workers hold no teachers after
            assert client.run(lambda dask_worker: [n for n in dask_worker.plugins if "mt2kd" in n]) == {
                w: [] for w in cluster.scheduler_info["workers"]}
    plan = make_plan(DEMO_CUTS, SHARD_HOURS)
    for name, layer in layers.items():
        assert not isinstance(outcome[name], BaseException), outcome[name]
        assert outcome[name].num_shards_written == len(plan.shards)
        store = TeacherStore.open(configs[name].store)
        teacher = load_teacher("whisper", tiny["whisper"], layer=layer)
        assert store.specs["whisper"].fingerprint == teacher.fingerprint
        assert sorted(store.cut_ids()) == sorted(c for s in plan.shards for c in s.cut_ids)
        from lhotse.serialization import deserialize_item

        for cut in (c for s in plan.shards for c in s.cuts):
            samples = np.asarray(deserialize_item(cut).resample(16_000).load_audio(), np.float32).mean(axis=0)
            np.testing.assert_allclose(store.get(cut["id"])["whisper"].astype(np.float32),
                                       teacher.extract([samples])[0], rtol=2e-3, atol=2e-3, err_msg=cut["id"])
