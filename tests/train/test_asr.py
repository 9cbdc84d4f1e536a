"""ASR heads: losses against torch/torchaudio computed by hand, masking of padding, memory estimate, config."""

from __future__ import annotations

import pytest
import torch

from mt2kd.errors import ConfigError, ValidationError
from mt2kd.train import AsrConfig, AsrHeads, transducer_memory_bytes

ENCODER_DIM = 12


def _heads(seed: int = 0, **overrides) -> AsrHeads:
    torch.manual_seed(seed)
    cfg = AsrConfig(**{"vocab_size": 11, "decoder_dim": 8, "joiner_dim": 16, **overrides})
    return AsrHeads(cfg, ENCODER_DIM)


def _batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = torch.randn(len(lengths), max(lengths) + 3, ENCODER_DIM, generator=g)  # padding past every cut
    return out, torch.tensor(lengths)


TOKENS = [[3, 4, 5, 4], [7], [2, 9, 10]]


def test_transducer_loss_is_torchaudio_on_the_joiner_logits_built_by_hand() -> None:
    from torchaudio.functional import rnnt_loss

    heads = _heads(use_ctc=False)
    out, lens = _batch([9, 4, 7])
    losses = heads.loss(out, lens, TOKENS)
    assert sorted(losses) == ["asr", "transducer"]
    per_cut = []
    for i, tokens in enumerate(TOKENS):
        context = [0, 0] + tokens  # two blanks before the first token
        dec = torch.stack([heads.decoder(torch.tensor([context[u:u + 2]]))[0, 0] for u in range(len(tokens) + 1)])
        logits = heads.transducer_logits(out[i, :lens[i], None], dec[None])  # [T, U+1, V]
        per_cut.append(rnnt_loss(logits[None], torch.tensor([tokens], dtype=torch.int32),
                                 lens[i:i + 1].int(), torch.tensor([len(tokens)], dtype=torch.int32), blank=0))
    assert losses["transducer"].item() == pytest.approx(torch.stack(per_cut).mean().item(), rel=1e-5)
    assert losses["asr"].item() == pytest.approx(losses["transducer"].item())


def test_ctc_loss_is_torch_ctc_per_cut_averaged_over_cuts() -> None:
    heads = _heads(use_transducer=False)
    out, lens = _batch([9, 4, 7])
    losses = heads.loss(out, lens, TOKENS)
    assert sorted(losses) == ["asr", "ctc"]
    per_cut = [torch.nn.functional.ctc_loss(
        torch.log_softmax(heads.ctc_head(out[i, :lens[i]]), -1)[:, None], torch.tensor([tokens]), lens[i:i + 1],
        torch.tensor([len(tokens)]), reduction="sum") for i, tokens in enumerate(TOKENS)]
    assert losses["ctc"].item() == pytest.approx(torch.stack(per_cut).mean().item(), rel=1e-5)
    assert losses["asr"].item() == pytest.approx(0.1 * losses["ctc"].item())  # the default ctc_weight


def test_the_asr_loss_is_the_weighted_sum_and_padding_does_not_count() -> None:
    heads = _heads(transducer_weight=0.7, ctc_weight=0.3)
    out, lens = _batch([9, 4, 7])
    losses = heads.loss(out, lens, TOKENS)
    expected = 0.7 * losses["transducer"] + 0.3 * losses["ctc"]
    assert losses["asr"].item() == pytest.approx(expected.item(), rel=1e-6)
    noisy = out.clone()
    noisy[1, 4:] = 1e3  # padding frames of cut 1 (and the shared tail) change, valid frames do not
    noisy[:, 9:] = -1e3
    again = heads.loss(noisy, lens, TOKENS)
    for name in losses:
        assert again[name].item() == pytest.approx(losses[name].item(), rel=1e-6)


def test_gradients_reach_every_head_parameter_and_the_encoder_output() -> None:
    heads = _heads()
    out, lens = _batch([9, 4, 7])
    out.requires_grad_()
    heads.loss(out, lens, TOKENS)["asr"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in heads.parameters())
    assert out.grad is not None and out.grad[1, 4:].abs().sum() == 0  # nothing flows into padding


def test_bad_token_ids_and_shapes_are_named() -> None:
    heads = _heads()
    out, lens = _batch([9, 4, 7])
    with pytest.raises(ValidationError, match=r"token ids of cut 1 must be in \[1, 11\)"):
        heads.loss(out, lens, [[3], [0, 2], [4]])
    with pytest.raises(ValidationError, match="one entry per cut"):
        heads.loss(out, lens, TOKENS[:2])
    with pytest.raises(ValidationError, match=r"encoder_out must be \[B, T, 12\]"):
        heads.loss(out[..., :5], lens, TOKENS)


def test_config_round_trip_and_validation() -> None:
    cfg = AsrConfig(vocab_size=500, use_ctc=False)
    assert AsrConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="at least one of use_transducer and use_ctc"):
        AsrConfig(use_transducer=False, use_ctc=False)
    with pytest.raises(ConfigError, match="decoder_dim must be a multiple of 4"):
        AsrConfig(decoder_dim=6)
    with pytest.raises(ConfigError, match="unknown AsrConfig fields"):
        AsrConfig.from_dict({"vocab": 3})
    with pytest.raises(ConfigError, match="no CTC head"):
        _heads(use_ctc=False).ctc_log_probs(torch.zeros(1, 2, ENCODER_DIM))


def test_memory_estimate_counts_the_padded_joint_tensors() -> None:
    cfg = AsrConfig(vocab_size=500, joiner_dim=512)
    # B x max T x (max U + 1) x (logits + their gradient + tanh output + its gradient) x 4 bytes
    assert transducer_memory_bytes([100, 80], [20, 30], cfg) == 2 * 100 * 31 * (2 * 500 + 2 * 512) * 4
    assert transducer_memory_bytes([], [], cfg) == 0
