"""The Zipformer student: frame rates per stack, size of zipformer-m, batch invariance, regularisers."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mt2kd.errors import ConfigError
from mt2kd.train import Student, StudentConfig, load_student
from mt2kd.train._checkpoint import save_checkpoint
from mt2kd.train._features import num_student_frames
from mt2kd.train._model import count_parameters
from mt2kd.train._regularisers import Balancer, Whiten, whiteness
from mt2kd.train._zipformer import set_training_step

PAPER_PARAMETERS = 66_000_000  # Zipformer-M as the MT2KD paper states it


def _tiny(seed: int = 0, **changes) -> Student:
    torch.manual_seed(seed)
    return Student(dataclasses.replace(StudentConfig.preset("zipformer-tiny"), **changes)).eval()


def test_shapes_and_frame_rate_of_every_stack_and_layer() -> None:
    model = _tiny()
    cfg = model.config.zipformer
    num_fbank = torch.tensor([400, 213])  # 4 s and 2.13 s at 100 Hz
    states = model.zipformer(torch.randn(2, 400, 80), num_fbank)
    t50 = (num_fbank + 1) // 2
    for i, factor in enumerate(cfg.downsampling):
        rate = 50 / factor  # Hz
        assert states.stack_outputs[i].shape == (2, 200, cfg.encoder_dims[i])
        assert len(states.layer_outputs[i]) == cfg.num_layers[i]
        for layer in states.layer_outputs[i]:
            assert layer.shape == (2, -(-200 // factor), cfg.encoder_dims[i])
        assert states.layer_masks[i].sum(1).tolist() == (-(-t50 // factor)).tolist()
        assert states.layer_masks[i].shape[1] == pytest.approx(4.0 * rate, abs=1)
        assert states.hidden_states[i].shape == (2, 100, cfg.output_dim)  # every stack reported at 25 Hz
    assert states.lengths.tolist() == [num_student_frames(int(n)) for n in num_fbank]
    out = model(torch.randn(2, 400, 80) + 15, num_fbank)
    assert out.frames.shape == (2, 100, 2560) and out.at_logits.shape == (2, 527)
    assert out.sv_embedding.shape == (2, 192) and len(out.hidden_states) == 6
    assert out.frame_mask.sum(1).tolist() == out.num_frames.tolist()


def test_zipformer_m_has_the_papers_size_with_the_mt2kd_heads() -> None:
    config = StudentConfig.preset("zipformer-m")
    total = count_parameters(config)  # encoder + M_ASR (512->2560) + M_AT (512->527) + M_SV (pooling, 1024->192)
    assert abs(total - PAPER_PARAMETERS) <= 0.03 * PAPER_PARAMETERS, total
    assert config.model_dim == 512 and config.zipformer.downsampling == (1, 2, 4, 8, 4, 2)
    assert count_parameters(StudentConfig.preset("zipformer-tiny")) < 1_000_000


def _assert_same_cut(alone, both, index: int) -> None:
    n = int(alone.num_frames[0])
    torch.testing.assert_close(alone.frames[0], both.frames[index, :n], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone.at_logits[0], both.at_logits[index], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone.sv_embedding[0], both.sv_embedding[index], atol=1e-5, rtol=1e-5)
    for a, b in zip(alone.hidden_states, both.hidden_states):
        torch.testing.assert_close(a[0], b[index, :n], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("length", [97, 160, 33, 1])
def test_a_cuts_outputs_do_not_depend_on_its_batch(length: int) -> None:
    model = _tiny()
    fbank = torch.randn(3, 203, 80) + 15
    both = model(fbank, torch.tensor([203, length, 150]))
    alone = model(fbank[1:2, :length], torch.tensor([length]))
    _assert_same_cut(alone, both, 1)


def test_every_layer_state_is_batch_invariant() -> None:
    model = _tiny(1)
    fbank = torch.randn(2, 251, 80)
    both = model.zipformer(fbank, torch.tensor([251, 130]))
    alone = model.zipformer(fbank[1:, :130], torch.tensor([130]))
    for stack_alone, stack_both, mask in zip(alone.layer_outputs, both.layer_outputs, alone.layer_masks):
        n = int(mask[0].sum())
        for a, b in zip(stack_alone, stack_both):
            torch.testing.assert_close(a[0, :n], b[1, :n], atol=1e-5, rtol=1e-5)


def test_regularisers_are_no_ops_at_eval() -> None:
    model = _tiny(2)
    plain = _tiny(2, zipformer=dataclasses.replace(model.config.zipformer, regularise=False))
    fbank, lengths = torch.randn(2, 150, 80) + 15, torch.tensor([150, 90])
    rng = torch.get_rng_state()
    early = model(fbank, lengths)
    set_training_step(model, 1_000_000)  # every scheduled rate at its end value
    late = model(fbank, lengths)
    assert torch.equal(torch.get_rng_state(), rng)  # eval draws nothing
    assert torch.equal(early.frames, late.frames) and torch.equal(early.frames, plain(fbank, lengths).frames)


def test_training_mode_is_random_early_and_settles() -> None:
    model = _tiny(3).train()
    fbank, lengths = torch.randn(4, 120, 80) + 15, torch.tensor([120, 100, 80, 60])
    torch.manual_seed(0)
    a = model(fbank, lengths).frames
    b = model(fbank, lengths).frames
    assert not torch.equal(a, b)  # layers and modules skipped at random early on
    set_training_step(model, 1_000_000)  # tiny's schedule_scale: everything settled long before
    assert torch.equal(model(fbank, lengths).frames, model(fbank, lengths).frames)


def test_balancer_pushes_a_dead_channel_up_and_whitener_spreads_energy() -> None:
    torch.manual_seed(0)
    mask = torch.tensor([[True] * 50 + [False] * 10])
    x = torch.randn(1, 60, 4)
    x[..., 0] = -x[..., 0].abs() - 1.0  # a channel that is never positive
    x.requires_grad_()
    balancer = Balancer(True).train()
    while True:  # it acts on a random quarter of the steps
        y = balancer(x, mask)
        if y is not x:
            break
    assert torch.equal(y, x)  # identity forward
    y.backward(torch.ones_like(y) * 1e-3)
    grad = x.grad
    assert grad is not None and (grad[0, :50, 0] < 1e-3).all()  # descent now raises the dead channel
    assert torch.equal(grad[0, 50:], torch.full((10, 4), 1e-3))  # padding untouched
    rank_one = (torch.randn(1, 60, 1) * torch.randn(1, 1, 8)).requires_grad_()
    assert whiteness(rank_one[0]) > 7.9
    whiten = Whiten(True, limit=2.0).train()
    while (z := whiten(rank_one, mask)) is rank_one:
        pass
    z.backward(torch.zeros_like(z) + 1e-3)
    assert rank_one.grad is not None and not torch.allclose(rank_one.grad[0, :50], torch.full((50, 8), 1e-3))


def test_sv_head_reads_the_configured_stack_and_config_round_trips(tmp_path) -> None:
    model = _tiny(4, sv_block=2)
    fbank = torch.randn(1, 120, 80) + 15
    before = model(fbank, torch.tensor([120])).sv_embedding
    with torch.no_grad():  # a later stack must not change the SV output
        model.zipformer.stacks[2].layers[0].ff1.out.weight.add_(1.0)
    assert torch.equal(model(fbank, torch.tensor([120])).sv_embedding, before)
    path = save_checkpoint({"step": 1, "student_config": model.config.to_dict(), "model": model.state_dict()},
                           tmp_path, keep_last=1)
    loaded, config = load_student(path)
    assert config == model.config and config.zipformer is not None
    assert torch.equal(loaded(fbank, torch.tensor([120])).frames, model(fbank, torch.tensor([120])).frames)
    with pytest.raises(ConfigError, match="sv_block"):
        dataclasses.replace(model.config, sv_block=7)
    with pytest.raises(ConfigError, match="model_dim"):
        dataclasses.replace(model.config, model_dim=64)
    with pytest.raises(ConfigError, match="exactly when"):
        dataclasses.replace(model.config, encoder="conformer")
