"""ASR heads: losses against torch/torchaudio by hand, padding, memory estimate, config; overfitting real speech."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from mt2kd.errors import ConfigError, ValidationError
from mt2kd.eval import decode, wer
from mt2kd.train import (
    AsrConfig,
    AsrHeads,
    Student,
    StudentConfig,
    Tokenizer,
    compute_fbank,
    cut_text,
    transducer_memory_bytes,
)

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
    with pytest.raises(ValidationError, match="at least one cut"):
        heads.loss(out[:0], lens[:0], [])


def test_empty_transcripts_are_valid_targets() -> None:
    heads = _heads()
    out, lens = _batch([9, 4])
    losses = heads.loss(out, lens, [[], [5]])  # a cut of silence: blanks only
    assert all(torch.isfinite(v) for v in losses.values())


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


# ---------------------------------------------------------------- overfitting real speech

DEMO_SPEECH = Path(__file__).resolve().parents[2] / "workflows" / "demo" / "speech_cuts.jsonl.gz"
NUM_UTTERANCES = 4  # the shortest demo utterances with distinct transcripts (about 9 s of speech)
CHECK_EVERY = 50  # steps between WER checks
TRANSDUCER_STEPS = 800  # bound on the steps to WER <= 10 % (one thread: about 40 s of CPU at most)
CTC_STEPS = 400  # the same for CTC alone (it gets there in about 200)


@dataclasses.dataclass
class Overfit:
    student: Any
    heads: AsrHeads
    losses: list[dict[str, float]]  # every step's named losses
    wers: list[tuple[int, float]]  # (steps done, WER) at each check
    encoder_out: torch.Tensor
    encoder_lens: torch.Tensor


@pytest.fixture(scope="module")
def utterances() -> tuple[torch.Tensor, torch.Tensor, list[str], Tokenizer]:
    from mt2kd.cuts import open_manifest

    picked: dict[str, Any] = {}
    for cut in sorted(open_manifest(DEMO_SPEECH), key=lambda c: c.duration):
        picked.setdefault(cut_text(cut), cut)
    cuts = list(picked.values())[:NUM_UTTERANCES]
    texts = [cut_text(c) for c in cuts]
    feats = [compute_fbank(c.load_audio()[0]) for c in cuts]
    fbank = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
    # word-sized pieces: a corpus this small allows fewer than asked
    return fbank, torch.tensor([f.shape[0] for f in feats]), texts, Tokenizer.train(texts, vocab_size=200)


def _overfit(utterances, search: dict[str, Any], max_steps: int, lr: float, **asr) -> Overfit:
    fbank, num_frames, texts, tokenizer = utterances
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest and the same on every machine
    try:
        torch.manual_seed(0)
        student = Student(StudentConfig.preset("tiny"))
        cfg = AsrConfig(vocab_size=tokenizer.vocab_size, decoder_dim=32, joiner_dim=64, **asr)
        heads = AsrHeads(cfg, student.config.model_dim)
        optimiser = torch.optim.Adam([*student.parameters(), *heads.parameters()], lr=lr)
        token_ids = tokenizer.encode(texts)
        run = Overfit(student, heads, [], [], torch.empty(0), torch.empty(0))
        for step in range(1, max_steps + 1):
            out = student(fbank, num_frames)
            losses = heads.loss(out.hidden_states[-1], out.num_frames, token_ids)
            optimiser.zero_grad()
            losses["asr"].backward()
            optimiser.step()
            run.losses.append({k: v.item() for k, v in losses.items()})
            if step % CHECK_EVERY == 0 and _check(run, utterances, search, step) <= 0.1:
                break
        return run
    finally:
        torch.set_num_threads(threads)


def _check(run: Overfit, utterances, search: dict[str, Any], step: int) -> float:
    fbank, num_frames, texts, tokenizer = utterances
    with torch.no_grad():
        out = run.student(fbank, num_frames)
    run.encoder_out, run.encoder_lens = out.hidden_states[-1], out.num_frames
    hyps = tokenizer.decode(decode(run.heads, run.encoder_out, run.encoder_lens, **search).tokens)
    run.wers.append((step, wer(texts, hyps).wer))
    return run.wers[-1][1]


def test_transducer_overfits_a_few_utterances_and_greedy_search_transcribes_them(utterances) -> None:
    """Transducer loss falls, greedy search transcribes, beam 1 = greedy, beam 4 scores no lower.

    The joint loss of the recipe (CTC on the same encoder) makes the encoder
    tell the utterances apart sooner. The standard transducer loss lets a
    model wait and emit several tokens on one frame, and an overfitted
    bidirectional encoder does that near the end of each utterance; greedy
    search is therefore scored with up to 4 symbols per frame.
    """
    run = _overfit(utterances, {"method": "greedy", "max_symbols": 4}, max_steps=TRANSDUCER_STEPS, lr=5e-3,
                   ctc_weight=1.0)
    first, last = run.losses[0]["transducer"], run.losses[-1]["transducer"]
    assert last < first / 50, f"transducer loss {first:.1f} -> {last:.2f}"
    assert run.wers[-1][1] <= 0.1, f"greedy WER per check: {run.wers}"
    greedy = decode(run.heads, run.encoder_out, run.encoder_lens, method="greedy")
    beam1 = decode(run.heads, run.encoder_out, run.encoder_lens, method="beam", beam=1)
    beam4 = decode(run.heads, run.encoder_out, run.encoder_lens, method="beam", beam=4)
    assert beam1.tokens == greedy.tokens and beam1.log_probs == pytest.approx(greedy.log_probs, abs=1e-4)
    assert all(b >= g - 1e-6 for b, g in zip(beam4.log_probs, greedy.log_probs))


def test_ctc_overfits_a_few_utterances_and_greedy_decoding_transcribes_them(utterances) -> None:
    run = _overfit(utterances, {"method": "ctc"}, max_steps=CTC_STEPS, lr=5e-3, use_transducer=False,
                   ctc_weight=1.0)
    first, last = run.losses[0]["ctc"], run.losses[-1]["ctc"]
    assert last < first / 20, f"CTC loss {first:.1f} -> {last:.2f}"
    assert run.wers[-1][1] <= 0.1, f"CTC greedy WER per check: {run.wers}"


@pytest.mark.gpu
def test_transducer_loss_under_bf16_autocast_stays_float32_and_close() -> None:
    heads = _heads().cuda()
    out, lens = _batch([9, 4, 7])
    out, lens = out.cuda(), lens.cuda()
    exact = heads.loss(out, lens, TOKENS)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        mixed = heads.loss(out, lens, TOKENS)
    assert mixed["transducer"].dtype == torch.float32
    assert mixed["transducer"].item() == pytest.approx(exact["transducer"].item(), rel=1e-5)  # joiner in fp32
    assert mixed["ctc"].item() == pytest.approx(exact["ctc"].item(), rel=2e-2)  # CTC head runs in bf16
