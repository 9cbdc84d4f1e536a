"""`mt2kd store ...` on real small stores written through the store API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from mt2kd.cli import main
from mt2kd.store import TeacherSpec, TeacherStore

FRAME_RATE = 25.0  # Hz, stacked whisper frames
DURATIONS = {"spk1-ch1-0001": 2.0, "spk1-ch1-0002": 3.52, "spk2 ch/7 ü": 1.24, "spk3-ch9-0100": 4.0}  # s
SPECS = [
    TeacherSpec("whisper", "frames", 8, frame_rate=FRAME_RATE, dtype="float32", config={"mode": "trim", "layer": -1}),
    TeacherSpec("beats", "clip", 527),
    TeacherSpec("ecapa", "clip", 6),
]


def num_frames(duration: float) -> int:
    """The stacked-whisper frame count of a cut (ARCHITECTURE.md)."""
    return ((int(round(duration * 16_000)) // 160 + 1) // 2) // 2


def make_outputs(seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {
        cut_id: {
            "whisper": rng.standard_normal((num_frames(d), 8)).astype(np.float32),
            "beats": (rng.standard_normal(527) * 3 - 4).astype(np.float32),
            "ecapa": rng.standard_normal(6).astype(np.float32),
        }
        for cut_id, d in DURATIONS.items()
    }


def json_object(value: object) -> dict[str, Any]:
    """A JSON value (a zarr attribute) that must be an object."""
    assert isinstance(value, dict), value
    return value


def write_store(path: Path, outputs: dict[str, dict[str, np.ndarray]], cuts_per_shard: int = 2) -> str:
    ts = TeacherStore.create(str(path), SPECS, attrs={"random_teachers": True})
    cut_ids = list(outputs)
    for shard_id, start in enumerate(range(0, len(cut_ids), cuts_per_shard)):
        with ts.shard_writer(shard_id) as writer:
            for cut_id in cut_ids[start:start + cuts_per_shard]:
                writer.put(cut_id, outputs[cut_id])
    return str(path)


def write_manifest(path: Path, durations: dict[str, float]) -> str:
    from lhotse import AudioSource, CutSet, MonoCut, Recording

    cuts: list[MonoCut] = []
    for cut_id, d in durations.items():
        rec = Recording(id=f"rec-{len(cuts)}", sources=[AudioSource("file", [0], f"/audio/{len(cuts)}.flac")],
                        sampling_rate=16_000, num_samples=int(d * 16_000), duration=d)
        cuts.append(MonoCut(id=cut_id, start=0.0, duration=d, channel=0, recording=rec))
    CutSet.from_cuts(cuts).to_file(path)
    return str(path)


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["store", *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def run_json(*args: str) -> dict:
    code, out = run(*args, "--json")
    assert code == 0, out
    return json.loads(out)


def text_facts(output: str) -> dict[str, str]:
    """The ``key : value`` lines of a text output (first occurrence of each key)."""
    facts: dict[str, str] = {}
    for line in output.splitlines():
        key, sep, value = line.partition(": ")
        if sep and key.strip() not in facts:
            facts[key.strip()] = value.strip()
    return facts


@pytest.fixture(scope="module")
def outputs() -> dict[str, dict[str, np.ndarray]]:
    return make_outputs()


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory, outputs: dict) -> str:
    return write_store(tmp_path_factory.mktemp("a") / "a.zarr", outputs)


# ---------------------------------------------------------------- info


def test_info_counts_cuts_shards_frames_and_hours(store_path: str, outputs: dict) -> None:
    facts = run_json("info", store_path)
    num_whisper_frames = sum(a["whisper"].shape[0] for a in outputs.values())
    assert facts["num_cuts"] == len(outputs)
    assert facts["num_shards"] == 2 and facts["num_failures"] == 0
    assert facts["teachers"]["whisper"]["num_frames"] == num_whisper_frames
    assert facts["audio_hours"] == pytest.approx(num_whisper_frames / FRAME_RATE / 3600)
    assert facts["audio_hours"] == pytest.approx(sum(DURATIONS.values()) / 3600)  # whole frames for these cuts
    assert list(facts["teachers"]) == [s.name for s in SPECS]
    for spec in SPECS:
        t = facts["teachers"][spec.name]
        assert (t["kind"], t["dim"], t["dtype"], t["codec"]) == (spec.kind, spec.dim, spec.dtype, spec.codec)
        num_rows = sum(a[spec.name].size for a in outputs.values()) // spec.dim
        assert t["float32_bytes"] == num_rows * spec.dim * 4 and t["num_cuts"] == len(outputs)
        assert t["bytes_on_disk"] > 0 and t["storage_ratio"] == pytest.approx(t["bytes_on_disk"] / t["float32_bytes"])
    disk = sum(f.stat().st_size for f in Path(store_path).rglob("*") if f.is_file())
    assert facts["bytes_on_disk"] == disk
    assert facts["teacher_bytes_on_disk"] == sum(t["bytes_on_disk"] for t in facts["teachers"].values()) < disk


def test_info_text_shows_the_json_facts(store_path: str) -> None:
    facts = run_json("info", store_path)
    code, out = run("info", store_path)
    assert code == 0
    text = text_facts(out)
    assert text["Cuts"] == str(facts["num_cuts"])
    assert text["Committed shards"] == str(facts["num_shards"])
    assert text["Audio hours"] == f"{facts['audio_hours']:,.3f}"
    assert text["Bytes on disk"].startswith(f"{facts['bytes_on_disk']:,} (")
    assert text["Storage ratio"].startswith(f"{facts['storage_ratio']:.2f}")
    assert text["Frames"] == f"{facts['teachers']['whisper']['num_frames']:,}"
    teacher_lines = [line.split(": ") for line in out.splitlines() if line.split(":")[0].strip() == "Teacher"]
    assert [value for _, value in teacher_lines] == list(facts["teachers"])
    assert len({line.index(":") for line in out.splitlines() if ":" in line}) == 1  # one aligned column
    assert text["Attr random_teachers"] == "true" and facts["attrs"] == {"random_teachers": True}
    assert facts["teachers"]["whisper"]["config"] == {"mode": "trim", "layer": -1}
    lines = out.splitlines()
    config_at = next(i for i, line in enumerate(lines) if line.strip().startswith("Config"))
    # one `key = value` line per option, sorted, the `=` aligned under the value column
    assert lines[config_at].split(": ", 1)[1] == "layer = -1"
    assert lines[config_at + 1] == " " * 22 + "mode  = trim"


def test_info_names_the_writers_at_work_and_the_gone_ones(tmp_path: Path, outputs: dict) -> None:
    import time

    ts = TeacherStore.create(str(tmp_path / "w.zarr"), SPECS)
    assert run_json("info", ts.url)["writers"] == [] and text_facts(run("info", ts.url)[1])["Being written"] == "none"
    gone = {"host": "gpu-node-9", "pid": 77, "attempt": "a1", "owner": "run-1", "beat": time.time() - 900}
    ts.loc.write("locks/000001.lock", json.dumps(gone).encode())
    with ts.shard_writer(0) as writer:  # at work while info looks
        writer.put("spk1-ch1-0001", outputs["spk1-ch1-0001"])
        facts = run_json("info", ts.url)
        text = text_facts(run("info", ts.url)[1])["Being written"]
    here, old = facts["writers"]
    assert (here["shard"], here["pid"], here["alive"]) == ("000000", os.getpid(), True) and here["beat_age_s"] < 60
    assert (old["shard"], old["host"], old["alive"]) == ("000001", "gpu-node-9", False) and old["beat_age_s"] >= 900
    assert text.startswith(f"000000 by pid {os.getpid()} on ") and "; 000001 by pid 77 on gpu-node-9, beat " in text
    assert text.endswith("s ago (gone: the shard's next writer takes the lock over)")


def test_info_counts_recorded_failures(tmp_path: Path, outputs: dict) -> None:
    ts = TeacherStore.create(str(tmp_path / "f.zarr"), SPECS)
    with ts.shard_writer(0) as writer:
        writer.put("spk1-ch1-0001", outputs["spk1-ch1-0001"])
        writer.record_failure("broken-cut", "audio file could not be decoded")
    facts = run_json("info", str(tmp_path / "f.zarr"))
    assert facts["num_cuts"] == 1 and facts["num_failures"] == 1


def test_info_lists_the_failures_by_kind_and_show_says_a_cut_failed(tmp_path: Path, outputs: dict) -> None:
    path = str(tmp_path / "f.zarr")
    ts = TeacherStore.create(path, SPECS)
    kept = "spk1-ch1-0001"
    with ts.shard_writer(0) as writer:
        writer.put(kept, {t: a for t, a in outputs[kept].items() if t != "beats"})
        writer.record_failure(kept, "non-finite output: 3 NaN/Inf values", teacher="beats")
        for i in range(25):
            writer.record_failure(f"gone-{i:02d}", f"missing audio file: /audio/{i}.flac")
    facts = run_json("info", path)
    assert facts["num_failures"] == 26 and len(facts["failures"]) == 26  # --json lists every one
    assert facts["failure_kinds"] == {"missing audio file": 25, "non-finite output": 1}
    assert facts["failures"][0] == {"cut_id": kept, "teacher": "beats", "shard": "000000",
                                    "reason": "non-finite output: 3 NaN/Inf values"}
    code, out = run("info", path)
    assert code == 0
    assert text_facts(out)["Failures"] == "26 (25 missing audio file, 1 non-finite output)"
    assert text_facts(out)["Failure records"] == "first 20 of 26"  # records, not cuts: one per failed teacher
    assert "  * cut 'spk1-ch1-0001', teacher 'beats' (shard 000000): non-finite output: 3 NaN/Inf values" in out
    assert "  * cut 'gone-18', all teachers (shard 000000): missing audio file: /audio/18.flac" in out
    assert "gone-19" not in out and "  ... 6 more failures (--json lists all)" in out

    code, out = run("show", path, "gone-03")
    assert code == 1 and "Traceback" not in out and "no such cut" not in out
    assert "cut 'gone-03' has no teacher outputs: the extraction recorded it as failed (shard 000000: missing " \
           "audio file: /audio/3.flac)" in out
    code, out = run("show", path, kept)
    assert code == 0 and text_facts(out)["Failed beats"] == "non-finite output: 3 NaN/Inf values (shard 000000)"
    assert [f["teacher"] for f in run_json("show", path, kept)["failures"]] == ["beats"]


# ---------------------------------------------------------------- ls, show


def test_ls_lists_every_cut_with_its_shapes(store_path: str, outputs: dict) -> None:
    code, out = run("ls", store_path, "--limit", "0")
    assert code == 0, out
    note, *lines = out.splitlines()  # the store says random_teachers: a NOTE line heads the listing
    assert note.startswith("NOTE") and ": random teacher weights in " in note
    listed = {line.split("  ")[0]: line for line in lines}
    assert set(listed) == set(outputs)
    for cut_id, arrays in outputs.items():
        assert f"whisper=[{arrays['whisper'].shape[0]}, 8]" in listed[cut_id]
        assert "beats=[527]" in listed[cut_id] and "ecapa=[6]" in listed[cut_id]
    facts = run_json("ls", store_path, "--limit", "0")
    assert facts["num_cuts"] == len(outputs)
    shapes = {c["cut_id"]: c["shapes"] for c in facts["cuts"]}
    assert shapes == {c: {t: list(a.shape) for t, a in arrays.items()} for c, arrays in outputs.items()}


def test_ls_reads_the_index_only(tmp_path: Path, outputs: dict) -> None:
    """With every data file gone, ls still lists each shape (show, which reads data, fails)."""
    path = write_store(tmp_path / "ls.zarr", outputs)
    removed = [p for p in Path(path).glob("shards/*/*/data/c/0/0")]
    for data_file in removed:
        data_file.unlink()
    assert len(removed) == 2 * len(SPECS)
    facts = run_json("ls", path, "--limit", "0")
    assert {c["cut_id"]: c["shapes"] for c in facts["cuts"]} == {
        c: {t: list(a.shape) for t, a in arrays.items()} for c, arrays in outputs.items()}
    code, out = run("show", path, "spk1-ch1-0001")
    assert code == 1 and "FileNotFoundError" in out


def test_ls_limit_says_how_many_are_left(store_path: str) -> None:
    code, out = run("ls", store_path, "--limit", "1")
    assert code == 0
    note, *lines = out.splitlines()  # the NOTE line of a random-teacher store first
    assert note.startswith("NOTE") and ": random teacher weights in " in note
    assert len(lines) == 2 and lines[1].startswith(f"... {len(DURATIONS) - 1} more of {len(DURATIONS)}")
    assert len(run_json("ls", store_path, "--limit", "1")["cuts"]) == 1


def test_show_top_logits_are_the_largest_stored_logits(store_path: str) -> None:
    cut_id = "spk2 ch/7 ü"  # an ID with a space, a slash and unicode
    stored = TeacherStore.open(store_path).get(cut_id)
    facts = run_json("show", store_path, cut_id)["teachers"]
    top = [t["index"] for t in facts["beats"]["top_logits"]]
    assert len(top) == 10 and top[0] == int(np.argmax(stored["beats"]))
    assert top == [int(i) for i in np.argsort(-stored["beats"], kind="stable")[:10]]
    assert [t["logit"] for t in facts["beats"]["top_logits"]] == pytest.approx(np.sort(stored["beats"])[::-1][:10])
    whisper = facts["whisper"]
    assert whisper["shape"] == list(stored["whisper"].shape)
    assert whisper["mean"] == pytest.approx(float(stored["whisper"].astype(np.float64).mean()))
    assert whisper["std"] == pytest.approx(float(stored["whisper"].astype(np.float64).std()))
    assert facts["ecapa"]["norm"] == pytest.approx(float(np.linalg.norm(stored["ecapa"])), rel=1e-6)
    assert "top_logits" not in facts["ecapa"]

    code, out = run("show", store_path, cut_id)
    assert code == 0
    text = text_facts(out)
    assert text["Logit #1"].endswith(f"(class {top[0]})") and text["Logit #10"].endswith(f"(class {top[9]})")
    assert text["Shape"] == f"[{stored['whisper'].shape[0]}, 8]"


def test_show_unknown_cut_is_a_one_line_error(store_path: str) -> None:
    code, out = run("show", store_path, "no-such-cut")
    assert code != 0
    assert "no-such-cut" in out and "Traceback" not in out


# ---------------------------------------------------------------- verify


def test_verify_clean_store_with_its_manifest(store_path: str, tmp_path: Path) -> None:
    code, out = run("verify", store_path)
    assert code == 0 and out.strip().endswith("OK"), out
    manifest = write_manifest(tmp_path / "cuts.jsonl.gz", DURATIONS)
    code, out = run("verify", store_path, "--cuts", manifest)
    assert code == 0, out
    facts = run_json("verify", store_path, "--cuts", manifest)
    assert facts["ok"] and facts["problems"] == [] and facts["num_cuts"] == len(DURATIONS)


def test_verify_labels_the_store_s_and_the_manifest_s_cut_counts(store_path: str, tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "part.jsonl", dict(list(DURATIONS.items())[:3]))
    code, out = run("verify", store_path, "--cuts", manifest)
    facts = text_facts(out)
    assert code == 0 and facts["Cuts in store"] == "4" and facts["Manifest"] == f"{manifest} (3 cuts)", out
    assert "Cuts" not in facts  # no bare count that could be either
    report = run_json("verify", store_path, "--cuts", manifest)
    assert report["num_cuts"] == 4 and report["num_manifest_cuts"] == 3
    assert run_json("verify", store_path)["num_manifest_cuts"] is None
    assert text_facts(run("verify", store_path)[1])["Manifest"] == "-"


def test_verify_reports_a_manifest_cut_missing_from_the_store(store_path: str, tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "cuts.jsonl", {**DURATIONS, "spk9-ch9-0009": 5.0})
    code, out = run("verify", store_path, "--cuts", manifest)
    assert code == 1
    assert "spk9-ch9-0009" in out and out.strip().endswith("FAILED")
    code, out = run("verify", store_path, "--cuts", manifest, "--json")
    facts = json.loads(out)
    assert code == 1 and not facts["ok"] and facts["num_problems"] == len(facts["problems"]) >= 1
    missing = [p for p in facts["problems"] if p["cut_id"] == "spk9-ch9-0009"]
    assert missing == [{"kind": "missing", "message": "cut 'spk9-ch9-0009' is in the manifest but not in the store",
                        "cut_id": "spk9-ch9-0009", "teacher": None, "shard": None, "store": None,
                        "text": "cut 'spk9-ch9-0009' is in the manifest but not in the store"}]


def test_verify_counts_recorded_failures_as_accounted_for(tmp_path: Path, outputs: dict) -> None:
    path = str(tmp_path / "f.zarr")
    ts = TeacherStore.create(path, SPECS)
    kept = ["spk1-ch1-0001", "spk1-ch1-0002"]
    with ts.shard_writer(0) as writer:
        writer.put(kept[0], outputs[kept[0]])
        writer.put(kept[1], {t: a for t, a in outputs[kept[1]].items() if t != "beats"})
        writer.record_failure(kept[1], "NaN logits", teacher="beats")
        writer.record_failure("spk2 ch/7 ü", "audio file could not be decoded")
    manifest = write_manifest(tmp_path / "cuts.jsonl", {c: DURATIONS[c] for c in [*kept, "spk2 ch/7 ü"]})
    code, out = run("verify", path, "--cuts", manifest)
    assert code == 0 and out.strip().endswith("OK"), out
    facts = text_facts(out)
    assert facts["Recorded failures"] == "2" and facts["Problems"] == "0"
    assert "  * cut 'spk2 ch/7 ü', all teachers (shard 000000): audio file could not be decoded" in out
    assert "  * cut 'spk1-ch1-0002', teacher 'beats' (shard 000000): NaN logits" in out
    report = run_json("verify", path, "--cuts", manifest)
    assert report["ok"] and report["problems"] == [] and report["num_failures"] == 2
    assert {(f["cut_id"], f["teacher"], f["shard"]) for f in report["failures"]} == {
        ("spk2 ch/7 ü", None, "000000"), ("spk1-ch1-0002", "beats", "000000")}
    # a cut neither stored nor recorded as failed is still missing
    manifest = write_manifest(tmp_path / "more.jsonl", {**DURATIONS, "spk2 ch/7 ü": DURATIONS["spk2 ch/7 ü"]})
    code, out = run("verify", path, "--cuts", manifest, "--json")
    assert code == 1 and [p["cut_id"] for p in json.loads(out)["problems"]] == ["spk3-ch9-0100"]


def test_info_and_verify_say_a_store_holds_only_part_of_its_extraction_plan(tmp_path: Path, outputs: dict) -> None:
    """An extraction stopped by Ctrl-C after some shards: the store is sound but incomplete."""
    path = str(tmp_path / "part.zarr")
    ts = TeacherStore.create(path, SPECS, attrs={"plan": {"fingerprint": "f", "num_shards": 14, "num_cuts": 4}})
    for shard, cut_id in zip([0, 1, 2, 3, 4, 5, 9], [*outputs, *outputs]):
        with ts.shard_writer(shard) as writer:
            if shard < 4:
                writer.put(cut_id, outputs[cut_id])
            else:
                writer.record_failure(f"failed-{shard}", "missing audio file: /a.flac")
    code, out = run("info", path)
    assert code == 0
    assert text_facts(out)["Committed shards"] == ("7 of 14 planned (not yet: 000006, 000007, 000008, 000010, "
                                                   "000011, 000012, 000013)")
    facts = run_json("info", path)
    assert facts["num_shards"] == 7 and facts["num_planned_shards"] == 14
    assert facts["missing_shards"] == ["000006", "000007", "000008", "000010", "000011", "000012", "000013"]
    code, out = run("verify", path)
    assert code == 1 and out.strip().endswith("FAILED")
    assert "  - the extraction plan has 14 shards; 7 are committed, 7 not: 000006, 000007, 000008, 000010, " \
           "000011, 000012, 000013 (an interrupted run? run it again to resume)" in out
    code, out = run("verify", path, "--json")
    assert code == 1 and [p["kind"] for p in json.loads(out)["problems"]] == ["incomplete"]
    assert ts.verify() == [] and [p.kind for p in ts.verify(complete=True)] == ["incomplete"]  # sound, not whole
    for shard in (6, 7, 8, 10, 11, 12, 13):  # the run resumed to its end
        with ts.shard_writer(shard) as writer:
            writer.record_failure(f"failed-{shard}", "missing audio file: /a.flac")
    code, out = run("verify", path)
    assert code == 0 and out.strip().endswith("OK"), out
    assert text_facts(run("info", path)[1])["Committed shards"] == "14 of 14 planned"


def test_a_store_without_a_plan_counts_its_shards_only(store_path: str) -> None:
    code, out = run("info", store_path)
    assert code == 0 and text_facts(out)["Committed shards"] == "2"
    assert run_json("info", store_path)["num_planned_shards"] is None and run("verify", store_path)[0] == 0


def test_verify_reports_frame_counts_that_disagree_with_durations(store_path: str, tmp_path: Path) -> None:
    longer = {**DURATIONS, "spk1-ch1-0001": DURATIONS["spk1-ch1-0001"] + 1.0}  # 25 frames too few
    code, out = run("verify", store_path, "--cuts", write_manifest(tmp_path / "cuts.jsonl", longer))
    assert code == 1 and "spk1-ch1-0001" in out


def test_verify_finds_a_nan_written_with_plain_zarr(tmp_path: Path, outputs: dict) -> None:
    # put() refuses NaN, so the NaN goes in afterwards through zarr itself; raw (codec "none")
    # float32 keeps the rewritten shard file byte-for-byte the same size, as the commit record says
    specs = [SPECS[0].with_storage(codec="none"), *SPECS[1:]]
    ts = TeacherStore.create(str(tmp_path / "nan.zarr"), specs)
    with ts.shard_writer(0) as writer:
        for cut_id, arrays in outputs.items():
            writer.put(cut_id, arrays)
    assert run("verify", str(tmp_path / "nan.zarr"))[0] == 0
    commit = zarr.open_group(str(tmp_path / "nan.zarr" / "commits" / "000000"), mode="r")
    record = json_object(commit.attrs["mt2kd_commit"])
    data = zarr.open_array(str(tmp_path / "nan.zarr" / record["path"] / "whisper" / "data"), mode="r+")
    row = int(record["teachers"]["whisper"]["offsets"][2]) + 3  # the fourth frame of the third cut
    data[row, 5] = np.nan
    code, out = run("verify", str(tmp_path / "nan.zarr"))
    assert code == 1
    nan_cut = list(outputs)[2]
    problems = [line for line in out.splitlines() if line.startswith("  - ")]
    assert len(problems) == 1 and repr(nan_cut) in problems[0] and "NaN" in problems[0]
    assert np.isnan(TeacherStore.open(str(tmp_path / "nan.zarr")).get(nan_cut)["whisper"][3, 5])


def test_load_durations_reads_lhotse_manifests(tmp_path: Path) -> None:
    from lhotse import CutSet

    from mt2kd.cuts import load_durations

    for name in ("cuts.jsonl", "cuts.jsonl.gz"):
        assert load_durations(write_manifest(tmp_path / name, DURATIONS)) == pytest.approx(DURATIONS)
    # a MixedCut line has no "duration" field: lhotse itself works it out from the tracks
    cuts = list(CutSet.from_file(write_manifest(tmp_path / "mono.jsonl", DURATIONS)))
    mixed = CutSet.from_cuts([cuts[0].append(cuts[1]), cuts[2]])
    mixed.to_file(tmp_path / "mixed.jsonl.gz")
    durations = load_durations(str(tmp_path / "mixed.jsonl.gz"))
    assert durations == pytest.approx({c.id: c.duration for c in mixed})
    assert durations[mixed[0].id] == pytest.approx(DURATIONS["spk1-ch1-0001"] + DURATIONS["spk1-ch1-0002"])


def test_verify_refuses_a_manifest_that_is_not_a_cutset(store_path: str, tmp_path: Path) -> None:
    (tmp_path / "notes.jsonl").write_text("this is not json\n")
    code, out = run("verify", store_path, "--cuts", str(tmp_path / "notes.jsonl"))
    assert code != 0 and "notes.jsonl" in out and "Traceback" not in out


def test_every_command_says_a_store_has_random_teachers(store_path: str, tmp_path: Path, outputs: dict) -> None:
    """The store's attrs say random_teachers: each command's text has one NOTE line, its --json a field."""
    note = f"NOTE                : random teacher weights in {store_path}; its outputs are for tests and demos, " \
           "not real labels"
    cut_id = "spk1-ch1-0001"
    for args in (["info"], ["ls"], ["show", cut_id], ["verify"], ["plot", cut_id, "-o", str(tmp_path / "c.png")],
                 ["diff", store_path]):
        code, out = run(args[0], store_path, *args[1:])
        assert code == 0 and out.splitlines().count(note) == (2 if args[0] == "diff" else 1), (args, out)
    for args in (["info"], ["ls"], ["show", cut_id], ["verify"]):
        assert run_json(args[0], store_path, *args[1:])["random_teachers"] is True, args
    real = write_store(tmp_path / "real.zarr", outputs)
    attrs_path = Path(real) / "zarr.json"
    doc = json.loads(attrs_path.read_text())
    doc["attributes"]["mt2kd"]["attrs"] = {"random_teachers": False}
    attrs_path.write_text(json.dumps(doc))
    facts = run_json("diff", store_path, real)
    assert facts["random_teachers_a"] is True and facts["random_teachers_b"] is False
    code, out = run("diff", real, store_path)
    assert code == 0 and "random teacher weights in " + store_path in out and "weights in " + real not in out
    for args in (["info"], ["ls"], ["show", cut_id], ["verify"]):
        code, out = run(args[0], real, *args[1:])
        assert code == 0 and "NOTE" not in out and run_json(args[0], real, *args[1:])["random_teachers"] is False


# ---------------------------------------------------------------- plot


def test_plot_writes_a_png(store_path: str, tmp_path: Path) -> None:
    png = tmp_path / "cut.png"
    code, out = run("plot", store_path, "spk1-ch1-0002", "-o", str(png))
    assert code == 0, out
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000  # three drawn panels, not an empty canvas
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert height > width / 2  # one panel per teacher, stacked
    code, out = run("plot", store_path, "spk1-ch1-0002", "-o", str(tmp_path / "no-such-dir" / "cut.png"))
    assert code == 1 and out.startswith("Error: FileNotFoundError") and "Traceback" not in out


# ---------------------------------------------------------------- diff


def test_diff_of_identical_stores_is_zero(store_path: str, tmp_path: Path, outputs: dict) -> None:
    other = write_store(tmp_path / "b.zarr", outputs, cuts_per_shard=3)
    facts = run_json("diff", store_path, other)
    assert facts["num_shared_cuts"] == len(outputs) and facts["num_only_a"] == facts["num_only_b"] == 0
    for name, d in facts["teachers"].items():
        assert d["max_abs_diff"] == 0.0 and d["mean_abs_diff"] == 0.0, name
        assert d["mean_cosine"] == pytest.approx(1.0) and d["num_cuts"] == len(outputs)
    code, _ = run("diff", store_path, other, "--atol", "0")
    assert code == 0


def test_diff_finds_one_changed_value_and_one_sided_cuts(store_path: str, tmp_path: Path, outputs: dict) -> None:
    changed = {c: {t: a.copy() for t, a in arrays.items()} for c, arrays in outputs.items()}
    changed["spk3-ch9-0100"]["whisper"][5, 3] += 0.75
    del changed["spk1-ch1-0001"]
    changed["extra-cut"] = outputs["spk1-ch1-0001"]
    other = write_store(tmp_path / "b.zarr", changed)
    facts = run_json("diff", store_path, other)
    assert facts["num_shared_cuts"] == len(outputs) - 1
    assert facts["num_only_a"] == 1 and facts["num_only_b"] == 1
    whisper = facts["teachers"]["whisper"]
    assert whisper["max_abs_diff"] == pytest.approx(0.75)
    num_values = sum(outputs[c]["whisper"].size for c in outputs if c != "spk1-ch1-0001")
    assert whisper["mean_abs_diff"] == pytest.approx(0.75 / num_values)
    assert 0.9 < whisper["mean_cosine"] < 1.0
    assert facts["teachers"]["beats"]["max_abs_diff"] == 0.0

    code, out = run("diff", store_path, other)
    assert code == 0
    assert text_facts(out)["Max abs diff"] == "0.75"
    assert text_facts(out)["Only in A"] == "1"
    assert run("diff", store_path, other, "--atol", "0.5")[0] == 1
    assert run("diff", store_path, other, "--atol", "1.0")[0] == 0


def test_diff_against_a_float16_copy_measures_the_rounding(store_path: str, tmp_path: Path, outputs: dict) -> None:
    specs = [SPECS[0].with_storage(dtype="float16"), *SPECS[1:]]
    ts = TeacherStore.create(str(tmp_path / "f16.zarr"), specs)
    with ts.shard_writer(0) as writer:
        for cut_id, arrays in outputs.items():
            writer.put(cut_id, arrays)
    whisper = run_json("diff", store_path, str(tmp_path / "f16.zarr"))["teachers"]["whisper"]
    source = np.concatenate([a["whisper"] for a in outputs.values()]).astype(np.float64)
    rounding = np.abs(source - source.astype(np.float16).astype(np.float64))
    assert whisper["max_abs_diff"] == pytest.approx(rounding.max())
    assert whisper["mean_abs_diff"] == pytest.approx(rounding.mean())
    assert 0.999 < whisper["mean_cosine"] < 1.0


# ---------------------------------------------------------------- errors, start-up


@pytest.mark.parametrize("command", ["info", "ls", "verify"])
def test_a_path_that_is_not_a_store_is_a_one_line_error(command: str, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "missing", tmp_path / "empty"):
        code, out = run(command, str(path))
        assert code != 0
        assert "Traceback" not in out and out.startswith("Error: ") and len(out.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["show", "plot", "diff"])
def test_a_chunk_that_cannot_be_decoded_is_named_in_one_line(command: str, tmp_path: Path, outputs: dict) -> None:
    path = str(tmp_path / "z.zarr")
    ts = TeacherStore.create(path, [SPECS[0].with_storage(codec="zstd"), *SPECS[1:]])
    with ts.shard_writer(0) as writer:
        for cut_id in ("spk1-ch1-0001", "spk1-ch1-0002"):
            writer.put(cut_id, outputs[cut_id])
    record = ts.shards["000000"]
    chunk_file = Path(path) / record.path / "whisper" / "data" / "c" / "0" / "0"
    data = bytearray(chunk_file.read_bytes())
    data[0] ^= 0xFF  # the first chunk's zstd frame header
    chunk_file.write_bytes(bytes(data))
    args = {"show": ["show", path, "spk1-ch1-0001"], "plot": ["plot", path, "spk1-ch1-0001", "-o",
                                                               str(tmp_path / "cut.png")],
            "diff": ["diff", path, path]}[command]
    code, out = run(*args)
    assert code == 1 and "Traceback" not in out and out.startswith("Error: ") and len(out.strip().splitlines()) == 1
    assert f"cut 'spk1-ch1-0001', teacher 'whisper' (shard 000000, {record.path}) could not be decoded" in out


def test_store_commands_do_not_import_torch(store_path: str) -> None:
    script = (
        "import sys\n"
        "from mt2kd.cli import main\n"
        "for args in (['info', sys.argv[1]], ['ls', sys.argv[1]], ['verify', sys.argv[1]],\n"
        "             ['diff', sys.argv[1], sys.argv[1]]):\n"
        "    try:\n"
        "        main(['store', *args])\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (args, e.code)\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, store_path], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "False"
