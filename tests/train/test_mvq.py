"""The MVQ KD target: cross-entropy against stored codes, and a student trained from codes on the demo corpus."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from mt2kd.errors import ConfigError
from mt2kd.tests._bench import load_bench
from mt2kd.train import MvqHead, expected_frames, mvq_cross_entropy, mvq_loss
from mt2kd.train._mvq import CODEBOOK_SIZE


def test_cross_entropy_is_over_valid_frames_and_codebooks_only() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 3 * CODEBOOK_SIZE, generator=generator)
    codes = torch.randint(0, 256, (2, 5, 3), generator=generator).to(torch.uint8)
    mask = torch.tensor([[True, True, True, False, False], [True, False, False, False, False]])
    expected = F.cross_entropy(logits[mask].reshape(-1, CODEBOOK_SIZE), codes[mask].reshape(-1).long())
    torch.testing.assert_close(mvq_cross_entropy(logits, codes, mask), expected)
    empty = mvq_cross_entropy(logits.requires_grad_(), codes, torch.zeros_like(mask))
    assert empty.item() == 0.0 and empty.requires_grad
    with pytest.raises(ConfigError, match="256 logits per codebook"):
        mvq_cross_entropy(logits[..., :-1], codes, mask)


def test_mvq_loss_aligns_frames_and_masks_missing_codes() -> None:
    head = MvqHead(8, 2)
    frames = torch.randn(2, 6, 8)
    codes = torch.randint(0, 256, (2, 4, 2)).to(torch.uint8)  # the teacher has 4 frames, the student 6
    target = {"values": codes, "lengths": torch.tensor([4, 3]), "present": torch.tensor([True, False])}
    logits = head(frames)
    expected = F.cross_entropy(logits[0, :4].reshape(-1, CODEBOOK_SIZE), codes[0].reshape(-1).long())
    torch.testing.assert_close(mvq_loss(logits, torch.tensor([6, 6]), target), expected)
    assert mvq_loss(logits, torch.tensor([6, 6]), None).item() == 0.0


def test_expected_frames_of_certain_predictions_decode_the_codes() -> None:
    from mt2kd.store import Quantizer, QuantizerConfig

    rng = np.random.default_rng(0)
    tensors: dict[str, np.ndarray] = {"to_logits.weight": np.zeros((512, 3), np.float32), "to_logits.bias": np.zeros(512, np.float32),
               "centers": rng.standard_normal((2, 256, 3)).astype(np.float32), "logits_scale": np.zeros((), np.float32),
               "centers_scale": np.full((), 0.01, np.float32), "id_buf": np.zeros(8, np.uint8),
               "data_mean": np.zeros(3, np.float32)}
    quantizer = Quantizer(QuantizerConfig("whisper", 3, 2), tensors)
    codes = rng.integers(0, 256, (4, 2))
    logits = torch.full((4, 2, 256), -1e4)
    logits[torch.arange(4)[:, None], torch.arange(2)[None, :], torch.from_numpy(codes)] = 0.0
    np.testing.assert_allclose(expected_frames(logits, quantizer.codebooks).numpy(), quantizer.decode(codes),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # about 1 min of CPU: teacher, quantiser and 40 student steps
def test_a_student_trained_from_codes_learns_the_float_frames(tmp_path: Path) -> None:
    """Demo speech cuts, tiny random whisper, its 4-codebook codes: the MVQ loss falls, held-out L1 improves."""
    bench = load_bench("codec_bench")
    settings = dataclasses.replace(bench.Settings(), steps=40, codebooks=(4,), quantizer_iters=10,
                                   train_frames=2000)
    corpus = bench.make_corpus(settings, tmp_path)
    bench.float_targets("float32", "float32", corpus, tmp_path)  # the store the codes are made from
    targets = bench.mvq_targets(4, settings, str(tmp_path / "float32.zarr"), tmp_path)
    student, head = bench.make_student(128, settings.seed, targets)  # as train_student starts
    untrained = bench.heldout_l1(corpus, student, head, targets)  # its frames: expected codebook centres
    first, last, trained = bench.train_student(corpus, targets, settings)
    assert last < 0.9 * first  # cross-entropy against the codes, first vs last 10 steps
    assert trained < 0.9 * untrained  # L1 to the float32 frames of cuts never trained on


def test_mvq_is_a_kd_target_of_the_trainer(tmp_path: Path, make_cuts, fill_store) -> None:
    """``--target teacher=whisper_mvq,loss=mvq``: a frames head of num_codebooks x 256 logits, its loss falls."""
    from mt2kd.store import QuantizeConfig, quantize
    from mt2kd.train import KDTarget, TrainConfig
    from mt2kd.train._trainer import train

    cuts = make_cuts("utt", [0.6, 0.8, 1.0, 1.2, 1.4, 1.6])
    manifest = tmp_path / "cuts.jsonl.gz"
    cuts.to_file(manifest)
    frames = fill_store(tmp_path / "teachers.zarr", cuts, whisper_dim=16)
    codes = tmp_path / "codes.zarr"
    quantize(QuantizeConfig(str(frames), str(codes), num_codebooks=2, train_frames=300, heldout_frames=30, iters=4,
                            batch_frames=64, refine_iters=1), echo=lambda text: None)
    config = TrainConfig(cuts=(str(manifest),), stores=(str(frames), str(codes)), exp_dir=str(tmp_path / "exp"),
                         student="tiny", max_duration=3.0, num_buckets=2, buffer_size=100, num_workers=0, lr=3e-3,
                         warmup_steps=10, lr_steps=1000.0, log_every=20, checkpoint_every=1000, keep_last=1, seed=1,
                         num_steps=40, targets=(KDTarget("whisper_mvq", loss="mvq"),))
    history = train(config)
    first = sum(h["whisper_mvq"] for h in history[:3]) / 3
    last = sum(h["whisper_mvq"] for h in history[-5:]) / 5
    assert first == pytest.approx(np.log(CODEBOOK_SIZE), rel=0.1)  # 256-way classifiers start near uniform
    assert last < 0.8 * first
