"""``mt2kd demo`` and ``mt2kd run --config``: the whole chain on the bundled demo corpus, 2 local workers.

prepare -> extract -> verify -> stage-1 KD -> eval, for real: tiny random
teachers, a LocalCluster, a tiny student trained for a few steps on CPU.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml
from click.testing import CliRunner

from mt2kd.cli import main
from mt2kd.cuts import load_durations
from mt2kd.store import TeacherStore
from mt2kd.workflows._config import WorkflowConfig
from mt2kd.workflows._demo import DEMO_DIR, DEMO_FINETUNE_STEPS, DEMO_MANIFESTS, DEMO_TRAIN_STEPS


def demo_cut_ids() -> set[str]:
    return {cut_id for m in DEMO_MANIFESTS for cut_id in load_durations(str(DEMO_DIR / m))}


def test_demo_corpus_has_speakers_transcripts_and_event_labels() -> None:
    from lhotse import CutSet

    speech = list(CutSet.from_jsonl_lazy(DEMO_DIR / "speech_cuts.jsonl.gz"))
    events = list(CutSet.from_jsonl_lazy(DEMO_DIR / "events_cuts.jsonl.gz"))
    assert len({c.supervisions[0].speaker for c in speech}) >= 4 and all(c.supervisions[0].text for c in speech)
    assert all(1.0 <= c.duration <= 6.0 for c in speech + events)
    assert all(c.custom["events"] for c in events) and any(len(c.custom["events"]) > 1 for c in events)
    assert all(not Path(c.recording.sources[0].source).is_absolute() for c in speech + events)


def _finite(value: object) -> bool:
    return isinstance(value, float) and math.isfinite(value)


def test_demo_runs_extract_train_eval_says_random_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    runner = CliRunner()
    result = runner.invoke(main, ["demo", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "RANDOM-weight" in result.output and "say nothing about the quality" in result.output
    assert "verify : OK" in result.output and "Teacher" in result.output  # the store info is shown
    assert f"train  : {DEMO_TRAIN_STEPS} steps" in result.output
    assert f"stage 2: {DEMO_FINETUNE_STEPS} steps (transducer" in result.output
    for key in ("KD L1  : student", "mAP    : student", "EER    : student", "WER    : fine-tuned student on speech",
                "mAP    : fine-tuned student on events", "EER    : fine-tuned student on speech", "tiny"):
        assert key in result.output, key
    # everything lives under OUT
    from lhotse import CutSet

    for manifest in DEMO_MANIFESTS:  # the copies in data/ load with plain lhotse from anywhere
        for cut in CutSet.from_file(out / "data" / manifest):
            assert Path(cut.recording.sources[0].source).is_file()
    store = TeacherStore.open(out / "store")
    assert set(store.cut_ids()) == demo_cut_ids() and store.attrs["random_teachers"] is True
    checkpoint = out / "exp" / f"checkpoint-{DEMO_TRAIN_STEPS:08d}.pt"
    assert checkpoint.is_file()
    report = json.loads((out / "report.json").read_text())
    student, teachers = report["student"], report["teachers"]
    assert student["model"]["checkpoint"] == str(checkpoint)
    assert student["kd_l1"]["num_cuts"] == len(demo_cut_ids()) and _finite(student["kd_l1"]["l1"])
    # 20 event clips carry labels (4 classes), 24 utterances carry 4 speakers
    assert student["map"]["num_cuts"] == 20 and _finite(student["map"]["map"])
    assert _finite(teachers["beats"]["map"]["map"])
    assert student["eer"]["num_target_trials"] == 4 * 15 and _finite(student["eer"]["eer"])
    assert _finite(teachers["ecapa"]["eer"]["eer"])
    # the summary prints the report's own numbers
    assert f"KD L1  : student {student['kd_l1']['l1']:.3f}" in result.output
    # stage 2: the fine-tuned student's own WER (24 transcribed utterances), mAP (20 clips), EER (4 speakers)
    tuned = json.loads((out / "student_report.json").read_text())
    speech, events = tuned["test_sets"]["speech"], tuned["test_sets"]["events"]
    assert tuned["model"]["kind"] == "finetune" and tuned["model"]["step"] == DEMO_FINETUNE_STEPS
    assert set(speech["wer"]) == {"greedy", "beam", "ctc"} and speech["wer"]["beam"]["num_cuts"] == 24
    assert all(_finite(speech["wer"][m]["rate"]) for m in speech["wer"])
    assert events["map"]["num_cuts"] == 20 and _finite(events["map"]["map"])
    assert speech["eer"]["num_target_trials"] == 4 * 15 and _finite(speech["eer"]["eer"])
    assert f"greedy {100 * speech['wer']['greedy']['rate']:.1f}%" in result.output

    again = runner.invoke(main, ["demo", "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert "0 shards written, 3 already committed" in again.output
    assert f"already at step {DEMO_TRAIN_STEPS}" in again.output  # resumed at the end: nothing retrained
    assert f"already at step {DEMO_FINETUNE_STEPS}" in again.output
    assert json.loads((out / "report.json").read_text())["student"] == student
    assert json.loads((out / "student_report.json").read_text())["test_sets"] == tuned["test_sets"]


def test_run_config_yaml_trains_and_evaluates_what_it_extracted(tmp_path: Path) -> None:
    from mt2kd.workflows._demo import demo_config

    base = demo_config(tmp_path / "run").to_dict()
    events = str(DEMO_DIR / "events_cuts.jsonl.gz")  # audio paths relative to the manifest: every stage resolves them
    config = {
        "extract": {**base["extract"], "cuts": [events]},
        "tiny_teachers": base["tiny_teachers"],
        # cuts and stores come from extract; the rest are TrainConfig fields as `mt2kd train kd` takes them
        "train": {"exp_dir": str(tmp_path / "exp"), "student": "tiny", "num_steps": 4, "max_duration": 10,
                  "num_buckets": 2, "num_workers": 0, "log_every": 2, "device": "cpu"},
        "eval": {"labels": str(DEMO_DIR / "labels.txt")},  # checkpoint: train's last one
        "report": str(tmp_path / "report.json"),
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    loaded = WorkflowConfig.load(path)
    assert loaded.train is not None and loaded.train.cuts == (events,)
    assert loaded.eval is not None and loaded.eval.checkpoint == str(tmp_path / "exp" / "checkpoint-00000004.pt")
    assert WorkflowConfig.from_dict(loaded.to_dict()) == loaded
    result = CliRunner().invoke(main, ["run", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert "verify: 20 cuts, 0 recorded failures, OK" in result.output
    assert "step 2/4 |" in result.output and "step 4/4 |" in result.output  # plain progress lines, no bar
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["student"]["kd_l1"]["num_cuts"] == 20 and _finite(report["student"]["map"]["map"])
    # the event clips name no speaker: EER is reported as not computable, with its reason
    assert report["student"]["eer"]["eer"] is None and "reason" in report["student"]["eer"]
    assert "EER    : student - (needs both target and non-target trials)" in result.output
