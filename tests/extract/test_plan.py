"""The plan: deterministic shards, duplicate IDs across inputs, relative paths, the dry run."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from mt2kd.errors import ConfigError, DuplicateCutError
from mt2kd.extract import ExtractConfig, TeacherConfig
from mt2kd.extract._plan import SECONDS_PER_HOUR, equal_shards, expected_frames, make_plan
from mt2kd.store import TeacherSpec
from mt2kd.tests.extract._corpus import DEMO, cut, tone, write_manifest

SPEECH = str(DEMO / "speech_cuts.jsonl.gz")
EVENTS = str(DEMO / "events_cuts.jsonl.gz")


def test_shards_share_the_audio_equally_and_hold_the_cuts_longest_first() -> None:
    shard_hours = 0.004
    plan = make_plan([SPEECH, EVENTS], shard_hours)
    again = make_plan([EVENTS, SPEECH], shard_hours)  # the same cuts in another order: the same plan
    assert [s.cut_ids for s in plan.shards] == [s.cut_ids for s in again.shards]
    flat = [i for s in plan.shards for i in s.cut_ids]
    assert len(flat) == len(set(flat)) == plan.num_cuts == 44
    assert {i.split("-")[0] for i in flat} == {"spk", "event"}
    durations = [(-float(c["duration"]), c["id"]) for s in plan.shards for c in s.cuts]
    assert durations == sorted(durations)  # one batch holds cuts of nearly one length: little padding
    assert len({d for d, _ in durations}) > len(plan.shards)  # not a corpus of one length
    assert [s.shard_id for s in plan.shards] == list(range(len(plan.shards)))
    assert len(plan.shards) == math.ceil(plan.audio_seconds / (shard_hours * SECONDS_PER_HOUR))
    target = plan.audio_seconds / len(plan.shards)
    longest = max(float(c["duration"]) for s in plan.shards for c in s.cuts)
    for shard in plan.shards:  # each within a cut of the equal share: no small last shard
        assert abs(shard.audio_seconds - target) <= longest
    assert sum(s.audio_seconds for s in plan.shards) == pytest.approx(plan.audio_seconds)


@pytest.mark.parametrize(("durations", "limit", "expected"), [
    ([10.0] * 9, 40.0, [[0, 1, 2], [3, 4, 5], [6, 7, 8]]),  # 90 s in 40 s shards: 3 of 30 s, not 40/40/10
    ([10.0] * 8, 40.0, [[0, 1, 2, 3], [4, 5, 6, 7]]),  # exactly two full shards
    ([1.0, 1.0, 1.0, 100.0, 1.0, 1.0, 1.0], 40.0, [[0, 1, 2], [3], [4, 5, 6]]),  # a long cut alone, none empty
    ([5.0, 0.0, -1.0, 5.0], 40.0, [[0, 1, 2, 3]]),  # zero and negative durations (bad input) count as 0 s
    ([], 40.0, []),
])
def test_equal_shards_cut_the_audio_into_runs_of_equal_length(durations: list[float], limit: float,
                                                               expected: list[list[int]]) -> None:
    assert equal_shards(durations, limit) == expected


def test_relative_recording_paths_resolve_next_to_the_manifest() -> None:
    plan = make_plan([SPEECH], 1.0)
    source = plan.shards[0].cuts[0]["recording"]["sources"][0]["source"]
    assert Path(source).is_absolute() and Path(source).is_file()
    assert Path(source).parent == DEMO / "speech"


def test_a_relative_audio_path_found_nowhere_names_both_places_looked_in(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import soundfile as sf

    from mt2kd.extract._audio import CutAudio, CutFailure, load_cut_audio

    corpus, elsewhere = tmp_path / "corpus", tmp_path / "elsewhere"
    corpus.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    manifest = write_manifest([cut("gone", Path("audio/gone.flac"), 16_000, 16_000)], corpus / "cuts.jsonl.gz")
    data = make_plan([str(manifest)], 1.0).shards[0].cuts[0]
    failure = load_cut_audio(data)
    assert isinstance(failure, CutFailure)
    assert failure.reason == (f"missing audio file: {elsewhere / 'audio' / 'gone.flac'} (nor beside the manifest, "
                              f"at {corpus / 'audio' / 'gone.flac'})")
    (elsewhere / "audio").mkdir()  # the file turns up once planned: it decodes
    sf.write(elsewhere / "audio" / "gone.flac", tone(1.0), 16_000)
    assert isinstance(load_cut_audio(data), CutAudio)


def test_the_plan_keeps_of_each_cut_only_what_decoding_reads_and_compactly() -> None:
    import tracemalloc

    from mt2kd.cuts import iter_cut_dicts
    from mt2kd.extract._audio import CutAudio, audio_only, load_cut_audio

    full = {c["id"]: c for c in iter_cut_dicts(SPEECH)}
    assert all(c["supervisions"] and c["supervisions"][0]["text"] for c in full.values())  # transcripts
    plan = make_plan([SPEECH], 1.0)
    planned = {c["id"]: c for s in plan.shards for c in s.cuts}
    assert planned.keys() == full.keys()
    for cut_id, planned_cut in planned.items():
        assert planned_cut == {**full[cut_id], "supervisions": []}
    one = next(iter(planned))
    extra = {**full[one], "custom": {"labels": [0, 3]}, "features": {"type": "kaldi-fbank", "storage_key": "x"}}
    assert audio_only(extra) == planned[one]
    a, b = load_cut_audio(planned[one]), load_cut_audio(full[one])
    assert isinstance(a, CutAudio) and isinstance(b, CutAudio) and (a.samples == b.samples).all()
    # what a plan holds against the same cuts as dicts (the client holds a whole run's)
    tracemalloc.start()
    kept = make_plan([SPEECH], 1.0)
    plan_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    tracemalloc.start()
    as_dicts = list(iter_cut_dicts(SPEECH))
    dict_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert kept.num_cuts == len(as_dicts) and plan_bytes < dict_bytes / 3


def test_a_line_that_is_not_a_cut_stops_the_plan_naming_the_manifest_and_line(tmp_path: Path) -> None:
    import gzip
    import json

    from mt2kd.cuts import iter_cut_dicts

    first = next(iter_cut_dicts(SPEECH))
    broken = tmp_path / "broken.jsonl.gz"
    with gzip.open(broken, "wt") as f:
        f.write(json.dumps(first) + "\n\n{not json\n")
    with pytest.raises(ConfigError, match=r"broken.jsonl.gz line 3 must be a JSON cut.*Got: Expecting"):
        make_plan([str(broken)], 1.0)
    recordings = tmp_path / "recordings.jsonl"
    recordings.write_text(json.dumps(first["recording"]) + "\n")
    with pytest.raises(ConfigError, match=r"recordings.jsonl line 1 must be a cut with an 'id' and a 'type'.*"
                                          r"not recordings or supervisions.*'sampling_rate'"):
        make_plan([str(recordings)], 1.0)
    odd = tmp_path / "odd.jsonl"
    odd.write_text(json.dumps({**first, "duration": "3 s"}) + "\n")
    with pytest.raises(ConfigError, match=r"odd.jsonl line 1: cut 'spk-anna-00' must have a duration in seconds. "
                                          r"Got '3 s'."):
        make_plan([str(odd)], 1.0)
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps({"id": "m", "type": "MixedCut", "tracks": [{"cut": {"id": "x"}}]}) + "\n")
    with pytest.raises(ConfigError, match=r"mixed.jsonl line 1 must be a cut lhotse can read. Got "):
        make_plan([str(mixed)], 1.0)


def test_a_manifest_that_is_not_what_its_name_says_stops_the_plan_naming_it(tmp_path: Path) -> None:
    import gzip

    plain = tmp_path / "plain.jsonl.gz"  # named .gz, written as text
    plain.write_bytes(gzip.decompress(Path(SPEECH).read_bytes()))
    with pytest.raises(ConfigError, match=rf"--cuts {plain} must be a gzipped \(its name ends in .gz\), UTF-8 "
                                          r"CutSet manifest. Got BadGzipFile after line 0"):
        make_plan([str(plain)], 1.0)
    cut_short = tmp_path / "short.jsonl.gz"
    cut_short.write_bytes(Path(SPEECH).read_bytes()[:-20])
    with pytest.raises(ConfigError, match=rf"--cuts {cut_short} must be a gzipped .*Got EOFError after line \d+"):
        make_plan([str(cut_short)], 1.0)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"id": "caf\xe9"}\n')
    with pytest.raises(ConfigError, match=rf"--cuts {latin} must be a UTF-8 CutSet manifest. Got UnicodeDecodeError"):
        make_plan([str(latin)], 1.0)


@pytest.mark.parametrize("duration", [float("nan"), float("inf"), float("-inf"), -1.5])
def test_a_non_finite_or_negative_duration_stops_the_plan_naming_manifest_line_and_cut(duration: float,
                                                                                         tmp_path: Path) -> None:
    import json

    from mt2kd.cuts import iter_cut_dicts

    cuts = list(iter_cut_dicts(SPEECH))[:3]
    cuts[1]["duration"] = duration  # json.dumps writes NaN, Infinity and -Infinity, and json.loads reads them
    manifest = tmp_path / "odd.jsonl"
    manifest.write_text("".join(json.dumps(c) + "\n" for c in cuts))
    with pytest.raises(ConfigError, match=rf"odd.jsonl line 2: cut '{cuts[1]['id']}' must have a finite duration "
                                          rf">= 0 in seconds. Got {duration!r}."):
        make_plan([str(manifest)], 1.0)


def test_mixed_cuts_are_planned_and_decoded_as_lhotse_mixes_them(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A corpus mixed beforehand (speech plus noise, as MixedCuts), its paths relative to its manifest."""
    import numpy as np
    import soundfile as sf
    from lhotse import CutSet, MonoCut, Recording

    from mt2kd.cuts import audio_sources
    from mt2kd.extract._audio import CutAudio, CutFailure, load_cut_audio

    folder = tmp_path / "corpus"
    folder.mkdir()
    sf.write(folder / "speech.wav", tone(2.0, seed=1), 16_000)
    sf.write(folder / "noise.wav", tone(1.0, freq=97.0, seed=2), 16_000)
    monkeypatch.chdir(folder)
    speech, noise = (MonoCut(f"{n}-cut", 0.0, Recording.from_file(f"{n}.wav", n).duration, 0,
                             recording=Recording.from_file(f"{n}.wav", n)) for n in ("speech", "noise"))
    mixed = speech.mix(noise, offset_other_by=1.5, snr=10.0)  # the noise runs past the speech: 2.5 s
    manifest = write_manifest([{**c.to_dict(), "type": type(c).__name__} for c in (mixed, speech)],
                              folder / "mixed.jsonl.gz")
    want = CutSet.from_jsonl(manifest)[mixed.id].load_audio()[0]
    monkeypatch.chdir(tmp_path)  # the relative paths must now resolve next to the manifest
    plan = make_plan([str(manifest)], 1.0)
    cuts = {c["id"]: c for s in plan.shards for c in s.cuts}
    assert list(cuts) == [mixed.id, "speech-cut"]  # longest first
    assert cuts[mixed.id]["duration"] == pytest.approx(2.5) and plan.audio_seconds == pytest.approx(4.5)
    assert [s["source"] for s in audio_sources(cuts[mixed.id])] == [str(folder / "speech.wav"),
                                                                     str(folder / "noise.wav")]
    decoded = load_cut_audio(cuts[mixed.id])
    assert isinstance(decoded, CutAudio) and decoded.duration == pytest.approx(2.5)
    np.testing.assert_allclose(decoded.samples, want, atol=1e-6)
    cuts[mixed.id]["tracks"][1]["cut"]["recording"]["sources"][0]["source"] = str(folder / "no-noise.wav")
    failure = load_cut_audio(cuts[mixed.id])
    assert isinstance(failure, CutFailure) and failure.reason == f"missing audio file: {folder / 'no-noise.wav'}"


def test_duplicate_ids_across_inputs_name_both_manifests(tmp_path: Path) -> None:
    import soundfile as sf

    sf.write(tmp_path / "a.flac", tone(1.0), 16_000)
    first = write_manifest([cut("spk-anna-00", tmp_path / "a.flac", 16_000, 16_000)], tmp_path / "extra.jsonl.gz")
    with pytest.raises(DuplicateCutError) as caught:
        make_plan([SPEECH, str(first)], 1.0)
    assert "spk-anna-00" in str(caught.value) and SPEECH in str(caught.value) and str(first) in str(caught.value)
    twice = write_manifest([cut("x", tmp_path / "a.flac", 16_000, 16_000)] * 2, tmp_path / "twice.jsonl.gz")
    with pytest.raises(DuplicateCutError, match=f"Got 'x' twice in {twice}."):
        make_plan([str(twice)], 1.0)


def test_a_manifest_given_twice_is_refused_as_such(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    with pytest.raises(ConfigError, match=f"--cuts must give each manifest once. Got {SPEECH} twice.$"):
        make_plan([SPEECH, EVENTS, SPEECH], 1.0)
    monkeypatch.chdir(DEMO)
    relative = os.path.relpath(SPEECH)
    with pytest.raises(ConfigError, match=f"Got {SPEECH} twice \\(as '{SPEECH}' and '{relative}'\\)"):
        make_plan([SPEECH, relative], 1.0)


def test_expected_frames_follow_the_whisper_frame_math() -> None:
    whisper = TeacherSpec("whisper", "frames", 8, frame_rate=25.0, config={"stack": 2})
    beats = TeacherSpec("beats", "clip", 527)
    assert expected_frames(whisper, 1.0) == 25
    assert expected_frames(whisper, 2.53) == ((40480 // 160 + 1) // 2) // 2
    assert expected_frames(beats, 7.0) == 1
    plan = make_plan([EVENTS], 1.0)
    assert plan.expected_bytes({"beats": beats}) == {"beats": 20 * 527 * 4}


def test_teacher_flag_parses_checkpoint_and_options() -> None:
    parsed = TeacherConfig.parse("whisper=/ckpt/v3.pt:layer=-1,mode=trim,stack=2")
    assert parsed == TeacherConfig("whisper", "/ckpt/v3.pt", {"layer": -1, "mode": "trim", "stack": 2})
    assert TeacherConfig.parse(parsed.to_text()) == parsed
    assert TeacherConfig.parse("ecapa=C:/models/ecapa").checkpoint == "C:/models/ecapa"
    with pytest.raises(ConfigError, match="NAME=CHECKPOINT"):
        TeacherConfig.parse("whisper")


def test_a_teacher_option_without_a_value_is_refused_as_such(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"--teacher whisper=tiny.pt:layer: the options after ':' must be "
                                          r"key=value\[,key=value...\], e.g. whisper=tiny.pt:layer=VALUE. Got 'layer'"):
        TeacherConfig.parse("whisper=tiny.pt:layer")
    with pytest.raises(ConfigError, match="Got 'stack' without a value"):
        TeacherConfig.parse("whisper=tiny.pt:layer=2,stack")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model:v2").write_bytes(b"")  # a file whose name holds a colon stays a checkpoint
    assert TeacherConfig.parse("beats=model:v2") == TeacherConfig("beats", "model:v2")
    assert TeacherConfig.parse("beats=model:v2.pt").checkpoint == "model:v2.pt"


def test_config_round_trips_and_refuses_bad_fields() -> None:
    config = ExtractConfig(cuts=(SPEECH,), store="s", teachers=(TeacherConfig("beats", "b.pt"),),
                           slurm_job_extra=("--constraint=a100",))
    assert ExtractConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="shard_hours must be > 0. Got 0"):
        ExtractConfig(cuts=(SPEECH,), store="s", teachers=config.teachers, shard_hours=0)
    with pytest.raises(ConfigError, match="unknown extract config fields"):
        ExtractConfig.from_dict({**config.to_dict(), "gpus": 3})
    for device in ("cuda:1", "cuda"):
        assert ExtractConfig.from_dict({**config.to_dict(), "device": device}).device == device
    for device in ("cuda:", "cuda:one", "gpu"):
        with pytest.raises(ConfigError, match=f"or cuda:N. Got '{device}'"):
            ExtractConfig.from_dict({**config.to_dict(), "device": device})


def test_the_scheduler_is_local_slurm_or_an_address_with_scheme_and_port() -> None:
    from mt2kd.cli import main

    config = ExtractConfig(cuts=(SPEECH,), store="s", teachers=(TeacherConfig("beats", "b.pt"),))
    for scheduler in ("local", "slurm", "tcp://10.0.0.5:8786", "tls://sched.example.org:8786", "tcp://[::1]:8786"):
        assert ExtractConfig.from_dict({**config.to_dict(), "scheduler": scheduler}).scheduler == scheduler
    for scheduler in ("sge", "Local", "tcp://host", "10.0.0.5:8786", ""):
        with pytest.raises(ConfigError, match=rf"scheduler must be one of \['local', 'slurm'\] or a scheduler "
                                              rf"address with scheme and port.*Got '{scheduler}'"):
            ExtractConfig.from_dict({**config.to_dict(), "scheduler": scheduler})
    result = CliRunner().invoke(main, ["extract", "--cuts", SPEECH, "--store", "s", "--teacher", "beats=b.pt",
                                       "--scheduler", "sge", "--dry-run"])
    assert result.exit_code == 1 and "Got 'sge'" in result.output and "Traceback" not in result.output


def test_an_unreachable_scheduler_is_a_config_error_naming_its_address(tmp_path: Path) -> None:
    import socket

    import dask
    import distributed  # noqa: F401  # its config first: leaving dask.config.set would drop what it added

    from mt2kd.extract._cluster import open_client

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    config = ExtractConfig(cuts=(SPEECH,), store="s", teachers=(TeacherConfig("beats", "b.pt"),),
                           scheduler=address)
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        with pytest.raises(ConfigError, match=f"--scheduler {address} must be the address of a running dask "
                                              f"scheduler. Got no connection: "):
            with open_client(config):
                pass


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path: Path) -> None:
    from mt2kd.cli import main
    from mt2kd.extract import make_tiny_checkpoints

    paths = make_tiny_checkpoints(tmp_path / "teachers")
    args = ["extract", "--cuts", SPEECH, "--cuts", EVENTS, "--store", str(tmp_path / "store"), "--dry-run",
            "--shard-hours", "0.01"] + [a for n, p in paths.items() for a in ("--teacher", f"{n}={p}")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "Cuts            : 44" in result.output and "Shards          : 3 of 0.009 h" in result.output
    plan = make_plan([SPEECH, EVENTS], 0.01)
    longest = max((c for s in plan.shards for c in s.cuts), key=lambda c: float(c["duration"]))
    assert f"Longest cut     : {float(longest['duration']):.1f} s ({longest['id']})" in result.output
    assert "Teacher whisper" in result.output and "random-weight" in result.output
    assert "Workers         : 2 local process(es) on cpu" in result.output
    assert not (tmp_path / "store").exists()
    slurm = CliRunner().invoke(main, args + ["--scheduler", "slurm", "--device", "cuda", "--slurm-gpus", "4"])
    assert "Workers         : 2 SLURM job(s) of 8 CPUs, 4 worker(s) on cuda each" in slurm.output, slurm.output


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_dry_run_of_a_half_precision_cuda_config_works_without_a_gpu(tmp_path: Path, precision: str) -> None:
    from mt2kd.cli import main
    from mt2kd.extract import make_tiny_checkpoints
    from mt2kd.extract._job import teacher_specs
    from mt2kd.extract._plugin import load_teachers

    paths = make_tiny_checkpoints(tmp_path / "teachers")
    args = ["extract", "--cuts", SPEECH, "--store", str(tmp_path / "store"), "--dry-run", "--device", "cuda",
            "--precision", precision] + [a for n, p in paths.items() for a in ("--teacher", f"{n}={p}")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "Teacher whisper" in result.output and "Workers         :" in result.output
    assert not (tmp_path / "store").exists()
    # the specs are those a worker reports: precision enters the fingerprint, the device does not
    config = ExtractConfig(cuts=(SPEECH,), store="s", precision=precision,
                           teachers=tuple(TeacherConfig(n, str(p)) for n, p in paths.items()))
    fp32 = ExtractConfig.from_dict({**config.to_dict(), "precision": "fp32"})
    want = {n: t.spec for n, t in load_teachers(fp32.teachers, "fp32", "cpu").items()}
    got = teacher_specs(config)
    assert got["whisper"].fingerprint != want["whisper"].fingerprint
    assert teacher_specs(fp32) == want


def test_a_missing_checkpoint_stops_a_local_job_before_any_cluster_or_store(tmp_path: Path,
                                                                            cluster_starts: list[str]) -> None:
    from mt2kd.errors import CheckpointNotFoundError
    from mt2kd.extract import extract, make_tiny_checkpoints

    paths = make_tiny_checkpoints(tmp_path / "teachers")
    teachers = (TeacherConfig("beats", str(paths["beats"])), TeacherConfig("whisper", str(tmp_path / "v3.pt")))
    config = ExtractConfig(cuts=(SPEECH,), store=str(tmp_path / "store"), teachers=teachers)
    with pytest.raises(CheckpointNotFoundError, match="whisper checkpoint .*v3.pt' does not exist"):
        extract(config, echo=lambda _: None, progress=False)
    assert cluster_starts == [] and not (tmp_path / "store").exists()


def test_a_misspelled_teacher_lists_every_teacher_and_stops_a_local_job_before_any_cluster(
        tmp_path: Path, cluster_starts: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import mt2kd.extract._teacher as teacher
    from mt2kd.extract import extract, load_teacher

    monkeypatch.setattr(teacher, "_REGISTRY", {})  # as in a fresh process: built-in teachers register on first use
    (tmp_path / "tiny.pt").write_bytes(b"")
    listed = (r"teacher must be one of \['beats', 'ecapa', 'hubert', 'wav2vec2', 'wavlm', 'whisper', "
              r"'whisper-text'\]. Got 'whispr'.")
    with pytest.raises(ConfigError, match=listed):
        load_teacher("whispr", tmp_path / "tiny.pt")
    config = ExtractConfig(cuts=(SPEECH,), store=str(tmp_path / "store"),
                           teachers=(TeacherConfig("whispr", str(tmp_path / "tiny.pt")),))
    with pytest.raises(ConfigError, match=listed):
        extract(config, echo=lambda _: None, progress=False)
    assert cluster_starts == [] and not (tmp_path / "store").exists()


def test_a_missing_manifest_stops_the_job_before_any_cluster_or_store(tmp_path: Path) -> None:
    from mt2kd.extract import extract

    missing = str(tmp_path / "nope.jsonl.gz")
    with pytest.raises(ConfigError, match="nope.jsonl.gz"):
        make_plan([SPEECH, missing], 1.0)  # checked before the first manifest is read
    config = ExtractConfig(cuts=(SPEECH, missing), store=str(tmp_path / "store"),
                           teachers=(TeacherConfig("beats", str(tmp_path / "beats.pt")),))
    with pytest.raises(ConfigError, match="nope.jsonl.gz"):
        extract(config, echo=lambda _: None, progress=False)
    assert not (tmp_path / "store").exists()


def test_planning_stops_early_when_asked(tmp_path: Path) -> None:
    import threading

    from mt2kd.extract._plan import PlanCancelled

    stop = threading.Event()
    stop.set()
    with pytest.raises(PlanCancelled, match="speech_cuts"):
        make_plan([SPEECH, EVENTS], 1.0, stop)


def test_a_failing_cluster_stops_the_planning_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import contextlib
    import threading

    import mt2kd.extract._cluster as cluster
    import mt2kd.extract._job as job
    from mt2kd.extract import extract

    seen: list[bool] = []

    def slow_plan(manifests: object, shard_hours: float, stop: threading.Event) -> None:
        seen.append(stop.wait(timeout=30))  # a huge manifest: still reading when the cluster fails

    @contextlib.contextmanager
    def no_cluster(config: object) -> Iterator[None]:
        raise RuntimeError("the scheduler cannot be reached")
        yield

    monkeypatch.setattr(job, "make_plan", slow_plan)
    monkeypatch.setattr(cluster, "open_client", no_cluster)
    (tmp_path / "beats.pt").touch()  # only its presence is checked before the (faked) cluster starts
    config = ExtractConfig(cuts=(SPEECH,), store=str(tmp_path / "store"),
                           teachers=(TeacherConfig("beats", str(tmp_path / "beats.pt")),))
    with pytest.raises(RuntimeError, match="cannot be reached"):
        extract(config, echo=lambda _: None, progress=False)
    assert seen == [True]  # told to stop, not left to read to the end


def test_a_bad_manifest_shows_while_the_workers_are_still_queued(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import concurrent.futures
    import contextlib
    import threading

    import soundfile as sf

    import mt2kd.extract._cluster as cluster
    import mt2kd.extract._job as job
    from mt2kd.extract import extract

    sf.write(tmp_path / "a.flac", tone(1.0), 16_000)
    twin = write_manifest([cut("spk-anna-00", tmp_path / "a.flac", 16_000, 16_000)], tmp_path / "twin.jsonl.gz")
    queued: concurrent.futures.Future[dict[str, object]] = concurrent.futures.Future()  # no worker yet
    timer = threading.Timer(30, queued.set_result, args=({},))  # a broken wait ends here, and fails below
    timer.start()

    @contextlib.contextmanager
    def fake_cluster(config: object) -> Iterator[object]:
        yield object()

    monkeypatch.setattr(cluster, "open_client", fake_cluster)
    monkeypatch.setattr(job, "start_workers", lambda client, config, say: None)
    monkeypatch.setattr(job, "ask_specs", lambda client, resources: queued)
    (tmp_path / "beats.pt").touch()  # only its presence is checked before the (faked) cluster starts
    config = ExtractConfig(cuts=(SPEECH, str(twin)), store=str(tmp_path / "store"),
                           teachers=(TeacherConfig("beats", str(tmp_path / "beats.pt")),))
    try:
        with pytest.raises(DuplicateCutError, match="spk-anna-00"):
            extract(config, echo=lambda _: None, progress=False)
        assert not queued.done()  # the error did not wait for the workers
    finally:
        timer.cancel()


@pytest.mark.parametrize("change, message", [
    ({"start": -1.0}, r"line 2: cut '{id}' must start at a finite time >= 0 s in its recording. Got start -1.0."),
    ({"start": 0.5}, r"line 2: cut '{id}' must end within its recording '.*' of [\d.]+ s. Got start 0.5 s \+ "
                     r"duration [\d.]+ s = [\d.]+ s."),
    ({"duration": 99.0}, r"line 2: cut '{id}' must end within its recording '.*' of [\d.]+ s. Got start 0 s \+ "
                         r"duration 99 s = 99 s."),
    ({"id": ""}, r"line 2 must have a non-empty cut 'id'. Got ''."),
], ids=["negative-start", "start-past-the-end", "duration-past-the-end", "empty-id"])
def test_a_cut_outside_its_recording_or_without_an_id_stops_the_plan_naming_manifest_line_and_cut(
        change: dict[str, object], message: str, tmp_path: Path) -> None:
    """Before: a start of -1 s read [0, 2 s]; an empty ID failed the run after the teachers ran."""
    import json

    from mt2kd.extract._plan import iter_cut_dicts

    cuts = [c for c in list(iter_cut_dicts(SPEECH))[:3] if c.get("type") == "MonoCut"]
    cuts[1]["start"] = 0.0
    cuts[1]["duration"] = cuts[1]["recording"]["duration"]  # the whole recording: within it, just
    manifest = tmp_path / "odd.jsonl"
    manifest.write_text("".join(json.dumps(c) + "\n" for c in cuts))
    make_plan([str(manifest)], 1.0)  # as it is, the plan takes it
    pattern = message.format(id=cuts[1]["id"])
    cuts[1].update(change)
    manifest.write_text("".join(json.dumps(c) + "\n" for c in cuts))
    with pytest.raises(ConfigError, match=pattern):
        make_plan([str(manifest)], 1.0)


def test_an_empty_manifest_is_an_error_naming_it(tmp_path: Path) -> None:
    """Before: exit 0 and an empty store that verified OK."""
    empty = write_manifest([], tmp_path / "empty_cuts.jsonl.gz")
    with pytest.raises(ConfigError, match=r"--cuts .*empty_cuts.jsonl.gz must hold at least one cut. Got an empty "
                                          r"manifest."):
        make_plan([str(SPEECH), str(empty)], 1.0)
