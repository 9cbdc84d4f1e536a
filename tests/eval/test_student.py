"""``mt2kd eval kd`` with a tiny random student saved as a real checkpoint."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mt2kd.cli import main
from mt2kd.eval._config import EvalConfig
from mt2kd.eval._run import evaluate
from mt2kd.eval._student import load_waveform


@pytest.fixture(scope="module")
def checkpoint(corpus, tmp_path_factory):
    from mt2kd.train import Student, StudentConfig
    from mt2kd.train._checkpoint import save_checkpoint

    torch.manual_seed(0)
    config = dataclasses.replace(StudentConfig.preset("tiny"), teacher_frame_dim=corpus.frames_dim,
                                 num_classes=len(corpus.labels), embedding_dim=corpus.embedding_dim, sv_block=2)
    model = Student(config)
    return save_checkpoint({"step": 0, "student_config": config.to_dict(), "model": model.state_dict()},
                           tmp_path_factory.mktemp("exp"), keep_last=1)


def _expected_l1(checkpoint, corpus) -> float:
    """Frame L1 computed one cut at a time, independently of the batched evaluation."""
    from lhotse import CutSet

    from mt2kd.train import compute_fbank, load_student

    model, _ = load_student(checkpoint)
    total, count = 0.0, 0
    with torch.no_grad():
        for cut, target in zip(CutSet.from_file(corpus.manifest), corpus.frames):
            fbank = compute_fbank(load_waveform(cut))
            frames = model(fbank[None], torch.tensor([len(fbank)])).frames[0].numpy()
            num_frames = min(len(frames), len(target))
            total += np.abs(frames[:num_frames] - target[:num_frames]).sum()
            count += num_frames * corpus.frames_dim
    return total / count


def test_student_report(checkpoint, corpus, store, tmp_path):
    out, plots = tmp_path / "report.json", tmp_path / "plots"
    result = CliRunner().invoke(main, [
        "eval", "kd", "--checkpoint", str(checkpoint), "--cuts", str(corpus.manifest), "--store", str(store),
        "--labels", str(corpus.labels_file), "--batch-size", "5", "--out", str(out), "--plots", str(plots),
    ], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    student = report["student"]
    assert 0.0 <= student["map"]["map"] <= 1.0
    assert student["map"]["num_cuts"] == len(corpus.cut_ids)
    assert 0.0 <= student["eer"]["eer"] <= 1.0
    assert student["kd_l1"]["num_cuts"] == len(corpus.cut_ids)
    # batches of 5 padded cuts must give the same L1 as scoring each cut alone
    assert student["kd_l1"]["l1"] == pytest.approx(_expected_l1(checkpoint, corpus), rel=1e-5)
    # the teacher ceiling is reported next to the student, on the same targets
    assert report["teachers"]["beats"]["map"]["map"] == pytest.approx(1.0)
    assert report["student"]["model"]["student_config"]["num_classes"] == len(corpus.labels)
    assert sorted(p.name for p in plots.iterdir()) == ["det.png", "per_class_ap.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots.iterdir())
    assert "student.kd_l1.l1" in result.output
    # every KD target with its own loss: the paper's three for a checkpoint without a train config
    targets = student["targets"]
    assert [(name, t["loss"]) for name, t in targets.items()] == [("whisper", "l1"), ("beats", "bce"), ("ecapa", "cos")]
    assert targets["whisper"]["value"] == pytest.approx(student["kd_l1"]["l1"], rel=1e-5)
    assert targets["beats"]["value"] > 0 and 0 <= targets["ecapa"]["value"] <= 2
    assert targets["ecapa"]["num_items"] == len(corpus.cut_ids) and targets["ecapa"]["block"] == 2
    assert "student.targets.ecapa.value" in result.output


def test_each_configured_target_is_scored_with_its_own_loss(corpus, store, tmp_path):
    from mt2kd.train import KDTarget, Student, StudentConfig, TrainConfig
    from mt2kd.train._checkpoint import save_checkpoint
    from mt2kd.train._config import HeadConfig

    targets = (KDTarget("whisper", block=1, loss="l1_logsigmoid_cos", name="early"),
               KDTarget("whisper", loss="mse", name="late"), KDTarget("ecapa", head="attentive", loss="cos"))
    heads = (HeadConfig("early", "frames", corpus.frames_dim, 1), HeadConfig("late", "frames", corpus.frames_dim),
             HeadConfig("ecapa", "attentive", corpus.embedding_dim))
    config = dataclasses.replace(StudentConfig.preset("tiny"), heads=heads)
    torch.manual_seed(1)
    train_config = TrainConfig(cuts=(str(corpus.manifest),), stores=(str(store),), targets=targets)
    path = save_checkpoint({"step": 0, "student_config": config.to_dict(), "train_config": train_config.to_dict(),
                            "model": Student(config).state_dict()}, tmp_path / "exp", keep_last=1)
    report = evaluate(EvalConfig(cuts=(str(corpus.manifest),), stores=(str(store),), checkpoint=str(path),
                                 labels=str(corpus.labels_file))).report
    scored = report["student"]["targets"]
    assert [(name, t["loss"], t["block"]) for name, t in scored.items()] == [
        ("early", "l1_logsigmoid_cos", 1), ("late", "mse", -1), ("ecapa", "cos", -1)]
    assert all(t["value"] is not None and t["value"] > 0 for t in scored.values())
    assert scored["early"]["num_items"] == scored["late"]["num_items"] > 0
    assert report["student"]["map"]["map"] is None  # no mean-pooling head: nothing to tag with


def test_a_student_is_scored_on_cuts_no_store_holds(checkpoint, corpus, make_store, tmp_path, caplog):
    # held-out cuts: mAP from their event labels, EER from their speakers; the teachers go unscored
    other = make_store(tmp_path / "other.zarr", corpus, skip=tuple(corpus.cut_ids))
    with caplog.at_level(logging.WARNING, logger="mt2kd.eval._run"):
        report = evaluate(EvalConfig(cuts=(str(corpus.manifest),), stores=(str(other),), checkpoint=str(checkpoint),
                                     labels=str(corpus.labels_file))).report
    assert report["student"]["map"]["num_cuts"] == len(corpus.cut_ids) and report["student"]["eer"]["eer"] is not None
    assert report["student"]["kd_l1"]["num_cuts"] == 0
    assert "hold none of the" in caplog.text and str(other) in caplog.text


def test_student_scores_do_not_depend_on_batch_size(checkpoint, corpus, store):
    def run(batch_size):
        return evaluate(EvalConfig(cuts=(str(corpus.manifest),), stores=(str(store),), checkpoint=str(checkpoint),
                                   labels=str(corpus.labels_file), batch_size=batch_size)).report["student"]

    one, many = run(1), run(12)
    assert many["map"]["map"] == pytest.approx(one["map"]["map"], abs=1e-6)
    assert many["eer"]["eer"] == pytest.approx(one["eer"]["eer"], abs=1e-6)
    assert many["kd_l1"]["l1"] == pytest.approx(one["kd_l1"]["l1"], rel=1e-5)


def test_unreadable_cut_is_skipped_and_recorded(checkpoint, corpus, store, tmp_path):
    from lhotse import CutSet, Recording
    from lhotse.audio import AudioSource

    cuts = list(CutSet.from_file(corpus.manifest))
    broken = cuts[0].recording
    cuts[0].recording = Recording(broken.id, [AudioSource("file", [0], str(tmp_path / "gone.wav"))],
                                  broken.sampling_rate, broken.num_samples, broken.duration)
    manifest = tmp_path / "cuts.jsonl.gz"
    CutSet.from_cuts(cuts).to_file(manifest)
    report = evaluate(EvalConfig(cuts=(str(manifest),), stores=(str(store),), checkpoint=str(checkpoint),
                                 labels=str(corpus.labels_file))).report["student"]
    assert list(report["kd_l1"]["failures"]) == [cuts[0].id]
    assert report["kd_l1"]["num_cuts"] == len(cuts) - 1
    assert report["map"]["num_cuts_missing"] == 1


@pytest.mark.gpu
def test_student_on_cuda_matches_cpu(checkpoint, corpus, store):
    def run(device):
        return evaluate(EvalConfig(cuts=(str(corpus.manifest),), stores=(str(store),), checkpoint=str(checkpoint),
                                   labels=str(corpus.labels_file), device=device)).report["student"]

    cpu, cuda = run("cpu"), run("cuda")
    assert cuda["kd_l1"]["l1"] == pytest.approx(cpu["kd_l1"]["l1"], rel=1e-3)
    assert cuda["map"]["map"] == pytest.approx(cpu["map"]["map"], abs=1e-3)


def test_student_with_other_class_count_is_refused(corpus, store, tmp_path):
    from mt2kd.train import Student, StudentConfig
    from mt2kd.train._checkpoint import save_checkpoint

    config = dataclasses.replace(StudentConfig.preset("tiny"), teacher_frame_dim=corpus.frames_dim,
                                 num_classes=len(corpus.labels) + 1, embedding_dim=corpus.embedding_dim, sv_block=2)
    path = save_checkpoint({"step": 0, "student_config": config.to_dict(), "model": Student(config).state_dict()},
                           tmp_path, keep_last=1)
    result = CliRunner().invoke(main, ["eval", "kd", "--checkpoint", str(path), "--cuts", str(corpus.manifest),
                                       "--store", str(store)])
    assert result.exit_code == 1
    assert f"num_classes must equal the 'beats' teacher's dim {len(corpus.labels)}" in result.output


def test_repeated_manifest_gives_the_students_scores_once(checkpoint, corpus, store, tmp_path):
    from lhotse import CutSet

    repeated = tmp_path / "repeated.jsonl.gz"
    CutSet.from_file(corpus.manifest).repeat(2).to_file(repeated)

    def run(manifest):
        return evaluate(EvalConfig(cuts=(str(manifest),), stores=(str(store),), checkpoint=str(checkpoint),
                                   labels=str(corpus.labels_file))).report["student"]

    want, got = run(corpus.manifest), run(repeated)
    assert got["kd_l1"]["num_cuts"] == len(corpus.cut_ids)  # copies found under the original ID, counted once
    assert got["kd_l1"]["l1"] == pytest.approx(want["kd_l1"]["l1"], rel=1e-6)
    assert got["map"] == want["map"] and got["eer"] == want["eer"]


def test_device_cuda_without_a_gpu_is_one_line(checkpoint, corpus, store, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = CliRunner().invoke(main, ["eval", "kd", "--checkpoint", str(checkpoint), "--cuts", str(corpus.manifest),
                                       "--store", str(store), "--device", "cuda"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "device 'cuda' must be a GPU this machine shows. Got no CUDA device" in result.output


def test_head_size_mismatch_says_which_number_is_the_stores_and_which_the_checkpoints(corpus, store, tmp_path):
    from mt2kd.train import Student, StudentConfig
    from mt2kd.train._checkpoint import save_checkpoint

    config = dataclasses.replace(StudentConfig.preset("tiny"), teacher_frame_dim=2 * corpus.frames_dim,
                                 num_classes=len(corpus.labels), embedding_dim=corpus.embedding_dim, sv_block=2)
    path = save_checkpoint({"step": 0, "student_config": config.to_dict(), "model": Student(config).state_dict()},
                           tmp_path, keep_last=1)
    result = CliRunner().invoke(main, ["eval", "kd", "--checkpoint", str(path), "--cuts", str(corpus.manifest),
                                       "--store", str(store)])
    assert result.exit_code == 1
    assert (f"teacher_frame_dim must equal the 'whisper' teacher's dim {corpus.frames_dim} in the stores "
            f"['{store}']. Got {2 * corpus.frames_dim} in the checkpoint {path}") in result.output
