"""The student: shapes, batch invariance, preset sizes, checkpoint round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mt2kd.errors import CheckpointNotFoundError, ConfigError
from mt2kd.train import Student, StudentConfig, average_checkpoints, compute_fbank, load_student
from mt2kd.train._checkpoint import list_checkpoints, save_checkpoint
from mt2kd.train._features import num_fbank_frames, num_student_frames
from mt2kd.train._model import count_parameters


def _tiny(seed: int = 0) -> Student:
    torch.manual_seed(seed)
    return Student(StudentConfig.preset("tiny")).eval()


def test_fbank_is_80_bins_at_100hz_and_deterministic() -> None:
    rng = np.random.default_rng(0)
    wave = rng.normal(0, 0.1, 16_000 * 2 + 37).astype(np.float32)
    feats = compute_fbank(wave)
    assert feats.shape == (num_fbank_frames(len(wave)), 80) == (200, 80)
    assert torch.equal(feats, compute_fbank(torch.from_numpy(wave)[None]))
    assert compute_fbank(wave[:100]).shape == (1, 80)  # shorter than one window still gives a frame


def test_student_shapes_and_every_block_output() -> None:
    model = _tiny()
    out = model(torch.randn(3, 123, 80) + 15, torch.tensor([123, 80, 7]))
    t = out.frames.shape[1]
    assert out.frames.shape == (3, t, 2560) and t == num_student_frames(123)
    assert out.at_logits.shape == (3, 527) and out.sv_embedding.shape == (3, 192)
    assert len(out.hidden_states) == model.config.num_blocks
    assert out.num_frames.tolist() == [num_student_frames(n) for n in (123, 80, 7)]
    assert out.frame_mask.sum(1).tolist() == out.num_frames.tolist()


def test_outputs_of_a_cut_do_not_depend_on_its_batch() -> None:
    model = _tiny()
    fbank = torch.randn(2, 160, 80) + 15
    both = model(fbank, torch.tensor([160, 90]))
    alone = model(fbank[1:, :90], torch.tensor([90]))
    n = int(alone.num_frames[0])
    torch.testing.assert_close(alone.frames[0], both.frames[1, :n], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone.at_logits[0], both.at_logits[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone.sv_embedding[0], both.sv_embedding[1], atol=1e-5, rtol=1e-5)


def test_presets_sizes() -> None:
    assert count_parameters(StudentConfig.preset("tiny")) < 1_000_000
    assert 55_000_000 < count_parameters(StudentConfig.preset("paper")) < 75_000_000
    with pytest.raises(ConfigError, match="sv_block"):
        StudentConfig(num_blocks=2, sv_block=3)


def test_sv_head_reads_the_configured_block() -> None:
    model = _tiny()
    fbank = torch.randn(1, 100, 80) + 15
    before = model(fbank, torch.tensor([100])).sv_embedding
    with torch.no_grad():  # perturbing a block after sv_block must not change the SV output
        model.blocks[model.config.sv_block].ffn1.net[1].weight.add_(1.0)
    after = model(fbank, torch.tensor([100]))
    torch.testing.assert_close(after.sv_embedding, before)


def test_checkpoint_round_trip_and_average(tmp_path) -> None:
    cfg = StudentConfig.preset("tiny")
    models = [_tiny(seed) for seed in range(3)]
    for step, model in enumerate(models, start=1):
        save_checkpoint({"step": step, "student_config": cfg.to_dict(), "model": model.state_dict()},
                        tmp_path, keep_last=2)
    paths = list_checkpoints(tmp_path)
    assert [p.name for p in paths] == ["checkpoint-00000002.pt", "checkpoint-00000003.pt"]
    loaded, loaded_cfg = load_student(paths[-1])
    assert loaded_cfg == cfg and not loaded.training
    for key, value in models[2].state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    avg = average_checkpoints(paths)
    key = "heads.whisper.linear.weight"
    expected = (models[1].state_dict()[key] + models[2].state_dict()[key]) / 2
    torch.testing.assert_close(avg[key], expected)
    with pytest.raises(CheckpointNotFoundError):
        load_student(tmp_path / "missing.pt")


def test_a_checkpoint_of_the_fixed_head_student_loads_into_the_default_heads(tmp_path) -> None:
    cfg = StudentConfig.preset("tiny")
    model = _tiny(4)
    renamed = {"heads.whisper.linear.": "asr_head.", "heads.beats.linear.": "at_head.",
               "heads.ecapa.pool.": "sv_pool.", "heads.ecapa.linear.": "sv_head."}
    legacy = {}
    for key, value in model.state_dict().items():  # the parameter names checkpoints had before
        prefix = next((p for p in renamed if key.startswith(p)), None)
        legacy[key if prefix is None else renamed[prefix] + key[len(prefix):]] = value
    assert "asr_head.weight" in legacy and "sv_pool.score.0.weight" in legacy
    save_checkpoint({"step": 1, "student_config": cfg.to_dict(), "model": legacy}, tmp_path, keep_last=1)
    loaded, _ = load_student(list_checkpoints(tmp_path)[-1])
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
