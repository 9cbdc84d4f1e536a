"""The job on a real LocalCluster with 2 workers: the demo corpus end to end, bad input, resume checks."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from mt2kd.errors import FingerprintMismatchError, TooManyFailuresError
from mt2kd.extract import ExtractConfig, TeacherConfig, extract
from mt2kd.extract._plan import make_plan
from mt2kd.store import TeacherSpec, TeacherStore
from mt2kd.tests.extract._corpus import BAD_CASES, DEMO, SAMPLE_RATE, make_bad_corpus

DEMO_CUTS = (str(DEMO / "speech_cuts.jsonl.gz"), str(DEMO / "events_cuts.jsonl.gz"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from mt2kd.extract import make_tiny_checkpoints

    return make_tiny_checkpoints(tmp_path_factory.mktemp("teachers"))


def config_for(tiny: dict[str, Path], cuts: tuple[str, ...], store: Path, **fields: Any) -> ExtractConfig:
    teachers = tuple(TeacherConfig(name, str(path)) for name, path in tiny.items())
    return ExtractConfig(cuts=cuts, store=str(store), teachers=teachers, workers=2, max_duration=8.0, **fields)


def direct_outputs(tiny: dict[str, Path], cut: dict[str, Any]) -> dict[str, np.ndarray]:
    """Each teacher called alone on the cut, audio decoded here through lhotse."""
    from lhotse.serialization import deserialize_item

    from mt2kd.extract import load_teacher

    audio = deserialize_item(cut).resample(16_000).load_audio()
    samples = np.asarray(audio, np.float32).mean(axis=0)
    return {name: load_teacher(name, path).extract([samples])[0] for name, path in tiny.items()}


def assert_same(stored: dict[str, np.ndarray], direct: dict[str, np.ndarray], cut_id: str) -> None:
    assert set(stored) == set(direct), cut_id
    for name, value in direct.items():
        # whisper frames are kept as float16: compare at that precision
        rtol, atol = (2e-3, 2e-3) if stored[name].dtype == np.float16 else (1e-4, 1e-5)
        np.testing.assert_allclose(stored[name].astype(np.float32), value, rtol=rtol, atol=atol, err_msg=cut_id)


@pytest.fixture(scope="module")
def demo_store(tiny: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[ExtractConfig, Any]:
    config = config_for(tiny, DEMO_CUTS, tmp_path_factory.mktemp("demo") / "store", shard_hours=0.01)
    return config, extract(config, progress=False)


def test_demo_corpus_end_to_end_equals_each_teacher_alone(tiny: dict[str, Path], demo_store: Any) -> None:
    config, summary = demo_store
    plan = make_plan(config.cuts, config.shard_hours)
    store = TeacherStore.open(config.store)
    assert summary.num_shards_written == len(plan.shards) == 3 and summary.num_failures == 0
    assert sorted(store.cut_ids()) == sorted(i for s in plan.shards for i in s.cut_ids)
    assert store.verify({c["id"]: c["duration"] for s in plan.shards for c in s.cuts}) == []
    assert store.attrs["random_teachers"] is True and store.attrs["whisper"]["mode"] == "trim"
    for cut in (plan.shards[0].cuts[0], plan.shards[1].cuts[-1], plan.shards[2].cuts[-1]):
        assert_same(store.get(cut["id"]), direct_outputs(tiny, cut), cut["id"])


def test_rerun_skips_committed_shards_and_other_options_are_refused(tiny: dict[str, Path], demo_store: Any) -> None:
    config, _ = demo_store
    again = extract(config, progress=False)
    assert again.num_shards_skipped == 3 and again.num_shards_written == 0
    layer0 = dataclasses.replace(config, teachers=tuple(
        dataclasses.replace(t, options={"layer": 0}) if t.name == "whisper" else t for t in config.teachers))
    with pytest.raises(FingerprintMismatchError, match="--overwrite"):
        extract(layer0, progress=False)
    with pytest.raises(FingerprintMismatchError, match="plan"):
        extract(dataclasses.replace(config, shard_hours=0.02), progress=False)


def test_a_store_planned_by_an_older_run_format_is_refused_by_name(tmp_path: Path) -> None:
    from mt2kd.extract._job import RUN_FORMAT, check_resumable, plan_fingerprint

    spec = TeacherSpec("beats", "clip", 527)
    plan = make_plan(DEMO_CUTS, 0.01)
    old = TeacherStore.create(tmp_path / "old", [spec], attrs={"run_format": 1, "plan": {
        "fingerprint": plan_fingerprint(plan)}})
    with pytest.raises(FingerprintMismatchError, match=f"run format 1, now {RUN_FORMAT}.*--overwrite"):
        check_resumable(old, {"beats": spec}, plan_fingerprint(plan))
    same = TeacherStore.create(tmp_path / "same", [spec], attrs={"run_format": RUN_FORMAT, "plan": {
        "fingerprint": plan_fingerprint(plan)}})
    check_resumable(same, {"beats": spec}, plan_fingerprint(plan))  # nothing to refuse


def test_a_refused_resume_shows_the_stored_inputs_beside_this_runs(tmp_path: Path) -> None:
    from mt2kd.extract._job import RUN_FORMAT, check_resumable, plan_fingerprint

    spec = TeacherSpec("beats", "clip", 527)
    before = ExtractConfig(cuts=DEMO_CUTS[:1], store=str(tmp_path / "s"), shard_hours=0.01,
                           teachers=(TeacherConfig("beats", "/t/beats.pt", {"min_duration_policy": "pad"}),))
    plan = make_plan(before.cuts, before.shard_hours)
    store = TeacherStore.create(tmp_path / "s", [spec], attrs={"run_format": RUN_FORMAT, "run": before.to_dict(),
                                                                "plan": {"fingerprint": plan_fingerprint(plan)}})
    now = dataclasses.replace(before, cuts=DEMO_CUTS, shard_hours=0.02)
    with pytest.raises(FingerprintMismatchError) as caught:
        check_resumable(store, {"beats": spec}, plan_fingerprint(make_plan(now.cuts, now.shard_hours)), now)
    assert (f"The store's run had --cuts {DEMO_CUTS[0]} --shard-hours 0.01; this run has --cuts {DEMO_CUTS[0]} "
            f"--cuts {DEMO_CUTS[1]} --shard-hours 0.02.") in str(caught.value)
    other = dataclasses.replace(spec, fingerprint="another")
    now = dataclasses.replace(before, teachers=(TeacherConfig("beats", "/t/beats.pt",
                                                              {"min_duration_policy": "error"}),))
    with pytest.raises(FingerprintMismatchError) as caught:
        check_resumable(store, {"beats": other}, plan_fingerprint(plan), now)
    assert ("The store's run had --teacher beats=/t/beats.pt:min_duration_policy=pad --precision fp32; this run "
            "has --teacher beats=/t/beats.pt:min_duration_policy=error --precision fp32.") in str(caught.value)


def test_bad_input_is_recorded_with_its_reason_and_the_rest_is_correct(tiny: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    manifest = make_bad_corpus(tmp_path / "bad")
    config = config_for(tiny, (str(manifest),), tmp_path / "store", shard_hours=0.001)
    summary = extract(config, progress=False)
    store = TeacherStore.open(config.store)
    reasons = {f["cut_id"]: f["reason"] for f in store.failures() if f["teacher"] is None}
    expected_bad = {cut_id: reason for cut_id, reason in BAD_CASES.items() if reason}
    assert set(reasons) == set(expected_bad) and summary.num_failures == len(expected_bad)
    for cut_id, reason in expected_bad.items():
        assert reasons[cut_id].startswith(reason), (cut_id, reasons[cut_id])
    assert sorted(store.cut_ids()) == sorted(c for c, r in BAD_CASES.items() if r is None)
    assert store.verify() == []
    plan = make_plan(config.cuts, config.shard_hours)
    for cut in (c for s in plan.shards for c in s.cuts if BAD_CASES[c["id"]] is None):
        assert_same(store.get(cut["id"]), direct_outputs(tiny, cut), cut["id"])


def test_max_failures_stops_the_job_and_committed_shards_stay(tiny: dict[str, Path], tmp_path: Path) -> None:
    manifest = make_bad_corpus(tmp_path / "bad")
    config = config_for(tiny, (str(manifest),), tmp_path / "store", shard_hours=0.0001, max_failures=1)
    with pytest.raises(TooManyFailuresError, match="at most 1 failed cuts"):
        extract(config, progress=False)
    store = TeacherStore.open(config.store)
    assert len(store.failures()) >= 2 and store.verify() == []


@pytest.mark.gpu
def test_on_cuda_the_job_matches_the_cpu_store(tiny: dict[str, Path], demo_store: Any, tmp_path: Path) -> None:
    """One GPU worker (GPU resource, teachers on the device, fp32) writes what the CPU job wrote."""
    cpu_config, _ = demo_store
    config = dataclasses.replace(cpu_config, store=str(tmp_path / "cuda-store"), device="cuda", workers=1)
    summary = extract(config, progress=False)
    assert summary.num_failures == 0 and summary.num_shards_written == 3
    cpu, gpu = TeacherStore.open(cpu_config.store), TeacherStore.open(config.store)
    assert sorted(gpu.cut_ids()) == sorted(cpu.cut_ids()) and gpu.verify() == []
    assert gpu.specs["whisper"].fingerprint == cpu.specs["whisper"].fingerprint  # the device is not an option
    for cut_id in cpu.cut_ids()[::7]:
        # GPU kernels (cuDNN may pick TF32 for convolutions) against CPU ones: close, not bitwise equal
        for name, value in cpu.get(cut_id).items():
            np.testing.assert_allclose(gpu.get(cut_id)[name].astype(np.float32), value.astype(np.float32),
                                       rtol=1e-2, atol=1e-2, err_msg=f"{cut_id} {name}")


def tone_corpus(folder: Path, num_cuts: int = 6) -> list[dict[str, Any]]:
    """``folder/cuts.jsonl.gz``: cuts of 1.0, 1.1, ... s, audio in ``folder/audio``; returns the cut dicts."""
    from mt2kd.tests.extract._corpus import cut, tone, write_manifest

    audio = folder / "audio"
    audio.mkdir(parents=True)
    cuts = []
    for i in range(num_cuts):
        sf.write(audio / f"c{i}.flac", tone(1.0 + 0.1 * i, seed=i), SAMPLE_RATE)
        cuts.append(cut(f"c{i}", audio / f"c{i}.flac", SAMPLE_RATE, int((1.0 + 0.1 * i) * SAMPLE_RATE)))
    write_manifest(cuts, folder / "cuts.jsonl.gz")
    return cuts


def beats_config(tiny: dict[str, Path], folder: Path, **fields: Any) -> ExtractConfig:
    """A fast run over ``tone_corpus(folder)``: the tiny BEATs alone, one worker, shards of about 2.5 s."""
    fields = {"store": str(folder / "store"), "workers": 1, "shard_hours": 2.5 / 3600, **fields}
    return ExtractConfig(cuts=(str(folder / "cuts.jsonl.gz"),), teachers=(TeacherConfig("beats", str(tiny["beats"])),),
                         **fields)


def test_failed_cuts_are_counted_on_rerun_and_retry_failed_recomputes_their_shards(
        tiny: dict[str, Path], tmp_path: Path) -> None:
    """The audio folder is gone during the first run (a disk not mounted), back for the reruns."""
    cuts = tone_corpus(tmp_path)
    config = beats_config(tiny, tmp_path, max_failures=1)
    audio = tmp_path / "audio"
    audio.rename(tmp_path / "unmounted")
    with pytest.raises(TooManyFailuresError) as error:
        extract(config, progress=False)
    store = TeacherStore.open(config.store)
    in_store = len({f["cut_id"] for f in store.failures()})
    assert in_store >= 2 and f"now hold {in_store} failed cuts" in str(error.value)
    assert "--retry-failed" in str(error.value)
    listed = f"mt2kd store info {config.store} lists them with their reasons"
    assert listed in str(error.value)
    (tmp_path / "unmounted").rename(audio)

    said: list[str] = []
    plain = dataclasses.replace(config, max_failures=100)
    rerun = extract(plain, echo=said.append, progress=False)
    store = TeacherStore.open(config.store)
    in_store = len({f["cut_id"] for f in store.failures()})
    assert rerun.num_failures == 0 and rerun.num_failures_in_store == in_store > 0
    assert f"holding {in_store} failed cuts" in "\n".join(said) and "--retry-failed" in "\n".join(said)
    assert f"the store holds {in_store} failed cuts" in rerun.line() and "--retry-failed" in rerun.line()
    assert listed in "\n".join(said) and listed in rerun.line()

    retried = extract(dataclasses.replace(plain, retry_failed=True), progress=False)
    store = TeacherStore.open(config.store)
    assert store.failures() == [] and sorted(store.cut_ids()) == [f"c{i}" for i in range(6)]
    assert retried.num_shards_retried > 0 and retried.num_failures_in_store == 0
    assert store.verify({c["id"]: c["duration"] for c in cuts}) == [] and store.leftovers() == []
    again = extract(dataclasses.replace(plain, retry_failed=True), progress=False)
    assert again.num_shards_written == 0 and again.num_shards_skipped == len(make_plan(config.cuts,
                                                                                       config.shard_hours).shards)


def test_retry_failed_is_a_flag_of_the_command(tmp_path: Path) -> None:
    from click.testing import CliRunner

    import mt2kd.extract._job as job
    from mt2kd.extract._cli import extract as command

    got: list[ExtractConfig] = []

    def fake(config: ExtractConfig, echo: Any = None) -> Any:
        got.append(config)
        raise TooManyFailuresError("stop here")

    manifest = tmp_path / "cuts.jsonl"
    manifest.write_text("")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(job, "extract", fake)
        CliRunner().invoke(command, ["--cuts", str(manifest), "--store", "s", "--teacher", "beats=b.pt",
                                     "--retry-failed"])
    assert got and got[0].retry_failed is True


def test_overwrite_deletes_a_store_that_would_resume_and_says_so(tiny: dict[str, Path], tmp_path: Path) -> None:
    from click.testing import CliRunner

    from mt2kd.extract._cli import extract as command

    tone_corpus(tmp_path, num_cuts=3)
    config = beats_config(tiny, tmp_path)
    first = extract(config, progress=False)
    said: list[str] = []
    again = extract(dataclasses.replace(config, overwrite=True), echo=said.append, progress=False)
    assert again.num_shards_skipped == 0 and again.num_shards_written == first.num_shards_written > 0
    assert any(line.startswith(f"--overwrite: deleting the store {config.store}") and "starting it again" in line
               for line in said), said
    assert TeacherStore.open(config.store).verify() == [] and len(TeacherStore.open(config.store)) == 3
    help_text = " ".join(CliRunner().invoke(command, ["--help"]).output.split())
    assert "--overwrite delete the existing store and start it again, even one this command would resume" in help_text


def test_overwrite_replaces_a_store_that_no_longer_opens(tiny: dict[str, Path], tmp_path: Path) -> None:
    tone_corpus(tmp_path, num_cuts=3)
    config = beats_config(tiny, tmp_path)
    extract(config, progress=False)
    root = Path(config.store) / "zarr.json"
    metadata = json.loads(root.read_text())
    metadata["attributes"]["mt2kd"]["format_version"] = 999  # a store this version cannot read
    root.write_text(json.dumps(metadata))
    said: list[str] = []
    again = extract(dataclasses.replace(config, overwrite=True), echo=said.append, progress=False)
    assert again.num_shards_skipped == 0 and again.num_shards_written > 0
    assert any("which does not open" in line and "starting it again" in line for line in said), said
    assert TeacherStore.open(config.store).verify() == [] and len(TeacherStore.open(config.store)) == 3


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_that_is_not_a_store_stops_the_job_before_any_worker_starts(
        tmp_path: Path, cluster_starts: list[str], overwrite: bool) -> None:
    from mt2kd.errors import StoreError

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep me")
    (tmp_path / "file").write_text("not a folder")
    ckpt = tmp_path / "beats.pt"
    ckpt.write_bytes(b"")
    for store, reason in (("out", r"a non-empty folder without a store's zarr.json \(it holds notes.txt\)"),
                          ("file", "which is a file")):
        config = ExtractConfig(cuts=DEMO_CUTS[:1], store=str(tmp_path / store), overwrite=overwrite,
                               teachers=(TeacherConfig("beats", str(ckpt)),))
        with pytest.raises(StoreError, match=rf"--store must name an mt2kd store.*Got {tmp_path / store}, {reason}"):
            extract(config, echo=lambda _: None, progress=False)
    assert cluster_starts == [] and (tmp_path / "out" / "notes.txt").read_text() == "keep me"


def test_a_checkpoint_of_the_wrong_kind_stops_the_job_before_any_worker_starts(
        tmp_path: Path, cluster_starts: list[str]) -> None:
    from mt2kd.errors import CheckpointError

    (tmp_path / "whisper").mkdir()
    (tmp_path / "whisper" / "tiny.pt").write_bytes(b"")
    (tmp_path / "ecapa.ckpt").write_bytes(b"")
    for teacher, message in ((TeacherConfig("whisper", str(tmp_path / "whisper")),
                              r"whisper checkpoint must be a \.pt file or a Hugging Face folder.*which is a folder "
                              r"without config.json \(it holds tiny\.pt"),
                             (TeacherConfig("ecapa", str(tmp_path / "ecapa.ckpt")),
                              "ecapa checkpoint must be a speechbrain pretrained folder.*which is a file")):
        config = ExtractConfig(cuts=DEMO_CUTS[:1], store=str(tmp_path / "s.zarr"), teachers=(teacher,))
        with pytest.raises(CheckpointError, match=message):
            extract(config, echo=lambda _: None, progress=False)
    assert cluster_starts == [] and not (tmp_path / "s.zarr").exists()


def test_a_store_being_made_by_another_job_is_not_taken_for_a_foreign_folder(tmp_path: Path) -> None:
    from mt2kd.store import check_store_path

    (tmp_path / "store" / "shards").mkdir(parents=True)  # what TeacherStore.create writes before the root
    check_store_path(str(tmp_path / "store"))
    check_store_path(str(tmp_path / "new"))


def test_a_job_waits_for_another_one_making_the_same_new_store(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # two jobs started at once on a new store: one makes it (its root metadata last), the other opens it once made
    import shutil
    import threading

    import mt2kd.extract._job as job
    import mt2kd.store._setup as store_setup
    from mt2kd.errors import StoreError

    config = ExtractConfig(cuts=DEMO_CUTS[:1], store=str(tmp_path / "store"),
                           teachers=(TeacherConfig("beats", "b.pt"),))
    plan = make_plan(config.cuts, config.shard_hours)
    specs = {"beats": TeacherSpec("beats", "clip", 527, fingerprint="f" * 16)}
    (tmp_path / "store" / "shards").mkdir(parents=True)  # the other job has begun making it

    def finish() -> None:
        time.sleep(0.5)
        shutil.rmtree(tmp_path / "store")
        TeacherStore.create(config.store, list(specs.values()), attrs=job.store_attrs(config, plan, specs, False))

    other = threading.Thread(target=finish)
    other.start()
    store = job.prepare_store(config, plan, specs, False)
    other.join()
    assert store.specs["beats"].fingerprint == "f" * 16
    # nobody finishing it: the reason this job could not make it, after the wait
    shutil.rmtree(tmp_path / "store")
    (tmp_path / "store" / "shards").mkdir(parents=True)
    monkeypatch.setattr(store_setup, "STORE_MADE_SECONDS", 0.3)
    with pytest.raises(StoreError, match="must not exist yet"):
        job.prepare_store(config, plan, specs, False)


def test_relative_paths_reach_the_workers_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The workers of a running scheduler or of SLURM resolve paths in their own working directory."""
    import os

    import mt2kd.extract._cluster as cluster

    (tmp_path / "beats.pt").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    config = ExtractConfig(cuts=(os.path.relpath(DEMO_CUTS[0]),), store="rel/store", events_log="events.jsonl",
                           teachers=(TeacherConfig("beats", "beats.pt"),))
    started: list[ExtractConfig] = []

    class Stop(Exception):
        pass

    def prestart(config: ExtractConfig) -> None:
        started.append(config)
        raise Stop  # before any process starts

    monkeypatch.setattr(cluster, "prestart_local_workers", prestart)
    with pytest.raises(Stop):
        extract(config, echo=lambda _: None, progress=False)
    got = started[0]
    assert got.store == str(tmp_path / "rel" / "store") and got.events_log == str(tmp_path / "events.jsonl")
    assert got.teachers[0].checkpoint == str(tmp_path / "beats.pt") and got.cuts == (DEMO_CUTS[0],)
    urls = dataclasses.replace(config, store="s3://bucket/store", events_log="").with_absolute_paths()
    assert urls.store == "s3://bucket/store" and urls.events_log == ""


def test_a_copied_random_checkpoint_without_its_marker_file_still_makes_a_random_store(
        tiny: dict[str, Path], tmp_path: Path) -> None:
    """The teachers report random_init from the checkpoint itself; the marker file is only a second source."""
    import shutil

    from mt2kd.extract import checkpoint_is_random

    copy = tmp_path / "copied" / "beats.pt"
    copy.parent.mkdir()
    shutil.copy(tiny["beats"], copy)
    assert not checkpoint_is_random(copy)
    tone_corpus(tmp_path, num_cuts=2)
    config = dataclasses.replace(beats_config(tiny, tmp_path), teachers=(TeacherConfig("beats", str(copy)),))
    said: list[str] = []
    dry = extract(dataclasses.replace(config, dry_run=True), echo=said.append, progress=False)
    assert dry.random_teachers is True and any(line.startswith("NOTE: random-weight") for line in said)
    summary = extract(config, progress=False)
    store = TeacherStore.open(config.store)
    assert store.specs["beats"].config["random_init"] is True
    assert store.attrs["random_teachers"] is True and summary.random_teachers is True and "RANDOM" in summary.line()


@pytest.mark.parametrize(("teacher", "options", "message"), [
    ("beats", "min_duration=pad", r"beats teacher options must be among precision \(str\), "
                                  r"min_duration_policy \(str\). Got unknown option 'min_duration' "
                                  r"\(did you mean 'min_duration_policy'\?\)"),
    ("whisper", "stack=2.5", r"whisper teacher option 'stack' must be int. Got 2.5 \(float\)"),
    ("ecapa", "max_batch_size=big", r"ecapa teacher option 'max_batch_size' must be int. Got 'big' \(str\)"),
    ("whisper", "layer=true", r"whisper teacher option 'layer' must be int. Got True \(bool\)"),
])
def test_a_mistyped_teacher_option_is_a_config_error_naming_teacher_option_and_type(
        tiny: dict[str, Path], tmp_path: Path, teacher: str, options: str, message: str) -> None:
    from click.testing import CliRunner

    from mt2kd.cli import main
    from mt2kd.errors import ConfigError
    from mt2kd.extract import load_teacher

    parsed = TeacherConfig.parse(f"{teacher}={tiny[teacher]}:{options}")
    with pytest.raises(ConfigError, match=message):
        load_teacher(teacher, parsed.checkpoint, **parsed.options)
    result = CliRunner().invoke(main, ["extract", "--cuts", DEMO_CUTS[0], "--store", str(tmp_path / "store"),
                                       "--dry-run", "--teacher", parsed.to_text()])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "ConfigError: " in result.output and "Traceback" not in result.output
    assert load_teacher(teacher, tiny[teacher]).spec.name == teacher  # the defaults still load


def test_ctrl_c_stops_the_run_with_one_line_and_no_worker_tracebacks(tiny: dict[str, Path], tmp_path: Path) -> None:
    """A terminal sends Ctrl-C to every process of the run: the workers printed ~35 lines of tracebacks each."""
    import os
    import signal
    import subprocess
    import sys
    import time

    teachers = [a for name, path in tiny.items() for a in ("--teacher", f"{name}={path}")]
    command = [sys.executable, "-m", "mt2kd", "extract", *(a for c in DEMO_CUTS for a in ("--cuts", c)),
               "--store", str(tmp_path / "store"), "--shard-hours", "0.0002", "--workers", "2", *teachers]
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as stderr:
        run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        deadline = time.monotonic() + 60
        while b"dask dashboard" not in log.read_bytes() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # the workers load their teachers and start on the shards
        os.killpg(run.pid, signal.SIGINT)  # as a terminal does: the whole process group
        assert run.wait(timeout=60) != 0
    text = log.read_text()
    assert "Traceback" not in text and "CancelledError" not in text, text
    assert re.search(r"^interrupted: \d+ shards committed; rerun the same command to resume.$", text, re.M), text
