"""The cut's one home: which manifests are taken, where relative audio is found, stored IDs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mt2kd.cuts import absolute_path, check_manifests, iter_cut_dicts, load_durations, open_manifest
from mt2kd.errors import ConfigError


def _manifest(path: Path, source: str = "audio/a.flac") -> Path:
    cut = {"id": "a", "type": "MonoCut", "start": 0.0, "duration": 1.5, "channel": 0, "supervisions": [],
           "recording": {"id": "a", "sampling_rate": 16000, "num_samples": 24000, "duration": 1.5,
                         "channel_ids": [0], "sources": [{"type": "file", "channels": [0], "source": source}]}}
    path.write_text(json.dumps(cut) + "\n")
    return path


def test_no_manifest_a_missing_one_and_one_given_twice_are_refused(tmp_path: Path) -> None:
    one = _manifest(tmp_path / "cuts.jsonl")
    with pytest.raises(ConfigError, match="at least one --cuts manifest is needed"):
        check_manifests([])
    with pytest.raises(ConfigError, match="--cuts must name an existing CutSet manifest. Got 'nope.jsonl'"):
        check_manifests([one, "nope.jsonl"])
    (tmp_path / "link.jsonl").symlink_to(one)
    with pytest.raises(ConfigError, match=r"--cuts must give each manifest once. .* \(as .*cuts.jsonl.*link.jsonl"):
        check_manifests([one, tmp_path / "link.jsonl"])


def test_the_training_and_evaluation_reader_refuse_a_manifest_given_twice(tmp_path: Path) -> None:
    from mt2kd.eval._inputs import load_cuts

    one = str(_manifest(tmp_path / "cuts.jsonl"))
    with pytest.raises(ConfigError, match="--cuts must give each manifest once"):
        load_cuts([one, one])


def test_both_readers_find_relative_audio_beside_the_manifest_first(tmp_path: Path, monkeypatch) -> None:
    corpus, cwd = tmp_path / "corpus", tmp_path / "cwd"
    (corpus / "audio").mkdir(parents=True)
    cwd.mkdir()
    (corpus / "audio" / "a.flac").write_bytes(b"")
    monkeypatch.chdir(cwd)
    beside = str(corpus / "audio" / "a.flac")
    assert absolute_path("audio/a.flac", str(corpus)) == beside
    assert absolute_path("audio/b.flac", str(corpus)) == str(cwd / "audio" / "b.flac")  # found nowhere: the cwd
    manifest = _manifest(corpus / "cuts.jsonl")
    assert next(iter_cut_dicts(manifest))["recording"]["sources"][0]["source"] == beside
    assert next(iter(open_manifest(manifest))).recording.sources[0].source == beside
    assert load_durations(manifest) == {"a": 1.5}
