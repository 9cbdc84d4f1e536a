"""``mt2kd demo`` and ``mt2kd run --config``: the chain on the bundled demo corpus, 2 local workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mt2kd.cli import main
from mt2kd.errors import ConfigError
from mt2kd.store import TeacherStore
from mt2kd.store._cli import load_durations
from mt2kd.workflows._config import DEMO_DIR, DEMO_MANIFESTS, WorkflowConfig, demo_config
from mt2kd.workflows._run import run_workflow


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


def test_demo_extracts_every_cut_says_the_teachers_are_random_and_resumes(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["demo", "--out", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    assert "RANDOM-weight" in result.output and "verify: OK" in result.output and "Teacher" in result.output
    for manifest in DEMO_MANIFESTS:  # the copies in data/ load with plain lhotse from anywhere
        from lhotse import CutSet

        for cut in CutSet.from_file(tmp_path / "demo" / "data" / manifest):
            assert Path(cut.recording.sources[0].source).is_file()
    store = TeacherStore.open(tmp_path / "demo" / "store")
    assert set(store.cut_ids()) == demo_cut_ids() and store.attrs["random_teachers"] is True
    again = runner.invoke(main, ["demo", "--out", str(tmp_path / "demo")])
    assert again.exit_code == 0, again.output
    assert "0 shards written, 3 already committed" in again.output


def test_run_config_runs_prepare_extract_verify(tmp_path: Path) -> None:
    config = demo_config(tmp_path / "run")
    data = config.to_dict()
    data["extract"]["cuts"] = [str(DEMO_DIR / "events_cuts.jsonl.gz")]
    (tmp_path / "run.json").write_text(json.dumps(data))
    assert WorkflowConfig.load(tmp_path / "run.json").to_dict() == data
    result = CliRunner().invoke(main, ["run", "--config", str(tmp_path / "run.json")])
    assert result.exit_code == 0, result.output
    assert "verify: 20 cuts, 0 recorded failures, OK" in result.output
    assert len(TeacherStore.open(config.extract.store)) == 20


def test_train_section_without_a_train_hook_is_a_clear_error(tmp_path: Path) -> None:
    config = WorkflowConfig.from_dict({**demo_config(tmp_path).to_dict(), "train": {"steps": 10}})
    with pytest.raises(ConfigError, match="'train' section needs the train stage"):
        run_workflow(config, progress=False)
    with pytest.raises(ConfigError, match="unknown workflow config fields"):
        WorkflowConfig.from_dict({**config.to_dict(), "stages": []})


def test_demo_events_use_the_label_list_and_audio_matches_the_manifest() -> None:
    import soundfile as sf
    from lhotse import CutSet

    from mt2kd.eval._tagging import load_label_list

    label_index = load_label_list(DEMO_DIR / "labels.txt")
    assert len(label_index) == 4
    for cut in CutSet.from_jsonl_lazy(DEMO_DIR / "events_cuts.jsonl.gz"):
        assert set(cut.custom["events"]) <= set(label_index)
    for manifest in DEMO_MANIFESTS:
        for cut in CutSet.from_jsonl_lazy(DEMO_DIR / manifest):
            info = sf.info(DEMO_DIR / cut.recording.sources[0].source)
            assert (info.samplerate, info.channels) == (16_000, 1)
            assert info.frames == cut.recording.num_samples == round(cut.duration * 16_000)
