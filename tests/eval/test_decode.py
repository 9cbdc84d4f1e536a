"""Batched decoding against brute force on tiny random heads: scores, beam 1 = greedy, batch invariance."""

from __future__ import annotations

import math

import pytest
import torch

from mt2kd.errors import ConfigError
from mt2kd.eval import DecodeResult, decode
from mt2kd.train import AsrConfig, AsrHeads

ENCODER_DIM = 8


def _heads(vocab_size: int, seed: int, scale: float = 3.0) -> AsrHeads:
    torch.manual_seed(seed)
    heads = AsrHeads(AsrConfig(vocab_size=vocab_size, decoder_dim=8, joiner_dim=8), ENCODER_DIM)
    with torch.no_grad():  # sharper distributions than the init's near-uniform ones: searches disagree more
        heads.transducer()[1].output.weight.mul_(scale)
    return heads


def _encoder_out(lengths: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor(lengths)
    out = torch.randn(len(lengths), max(lengths) + 2, ENCODER_DIM, generator=g)  # padding past every cut
    out = out * (torch.arange(out.shape[1])[None, :, None] < lens[:, None, None])
    return out, lens


def _frame_log_probs(heads: AsrHeads, frame: torch.Tensor, tokens: list[int]) -> torch.Tensor:
    """Log-probabilities of every symbol (blank = 0) on ``frame`` after ``tokens``, from the modules directly."""
    decoder, _ = heads.transducer()
    context = ([0] * decoder.context_size + tokens)[-decoder.context_size:]
    dec = decoder(torch.tensor([context]))[:, -1]
    return torch.log_softmax(heads.transducer_logits(frame[None], dec), -1)[0].double()


def _exhaustive(heads: AsrHeads, frames: torch.Tensor) -> dict[tuple[int, ...], float]:
    """Log-probability of every token sequence, summed over all its one-symbol-per-frame alignments."""
    totals: dict[tuple[int, ...], list[float]] = {}

    def walk(t: int, tokens: list[int], score: float) -> None:
        if t == frames.shape[0]:
            totals.setdefault(tuple(tokens), []).append(score)
            return
        for symbol, lp in enumerate(_frame_log_probs(heads, frames[t], tokens).tolist()):
            walk(t + 1, tokens + [symbol] if symbol else tokens, score + lp)

    walk(0, [], 0.0)
    return {k: float(torch.logsumexp(torch.tensor(v, dtype=torch.float64), 0)) for k, v in totals.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wide_beam_finds_the_exact_best_sequence(seed: int) -> None:
    heads = _heads(vocab_size=3, seed=seed).eval()
    out, lens = _encoder_out([4], seed)
    with torch.no_grad():
        exact = _exhaustive(heads, out[0, :4])
    best = max(exact, key=lambda k: exact[k])
    res = decode(heads, out, lens, method="beam", beam=3 ** 4)  # wide enough to keep every hypothesis
    assert res.tokens == [list(best)]
    assert res.log_probs[0] == pytest.approx(exact[best], abs=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_greedy_returns_the_argmax_path_and_its_log_prob(seed: int) -> None:
    heads = _heads(vocab_size=5, seed=seed).eval()
    out, lens = _encoder_out([6, 3, 5], seed)
    res = decode(heads, out, lens, method="greedy")
    for i, n in enumerate(lens.tolist()):
        tokens: list[int] = []
        score = 0.0
        with torch.no_grad():
            for t in range(n):  # each frame's most likely symbol after the tokens so far
                lp = _frame_log_probs(heads, out[i, t], tokens)
                score += float(lp.max())
                tokens += [int(lp.argmax())] if int(lp.argmax()) else []
        assert res.tokens[i] == tokens
        assert res.log_probs[i] == pytest.approx(score, abs=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_beam_1_equals_greedy_and_beam_4_scores_no_lower(seed: int) -> None:
    heads = _heads(vocab_size=7, seed=seed)
    out, lens = _encoder_out([9, 14, 5, 12], seed)
    greedy = decode(heads, out, lens, method="greedy")
    beam1 = decode(heads, out, lens, method="beam", beam=1)
    beam4 = decode(heads, out, lens, method="beam", beam=4)
    assert beam1.tokens == greedy.tokens
    assert beam1.log_probs == pytest.approx(greedy.log_probs, abs=1e-5)
    assert all(b >= g - 1e-6 for b, g in zip(beam4.log_probs, greedy.log_probs))


@pytest.mark.parametrize("method", ["greedy", "beam", "ctc"])
def test_a_cut_decodes_the_same_alone_and_in_a_padded_batch(method: str) -> None:
    heads = _heads(vocab_size=9, seed=5)
    out, lens = _encoder_out([7, 13, 4], seed=5)
    batch = decode(heads, out, lens, method=method, beam=3)
    for i, n in enumerate(lens.tolist()):
        alone = decode(heads, out[i:i + 1, :n], lens[i:i + 1], method=method, beam=3)
        assert alone.tokens == batch.tokens[i:i + 1]
        assert alone.log_probs == pytest.approx(batch.log_probs[i:i + 1], abs=1e-5)


def test_greedy_emits_up_to_max_symbols_per_frame() -> None:
    heads = _heads(vocab_size=4, seed=0)
    with torch.no_grad():  # blank never wins: every step emits a token
        heads.transducer()[1].output.bias[0] = -100.0
    out, lens = _encoder_out([5, 3], seed=0)
    assert [len(t) for t in decode(heads, out, lens, method="greedy").tokens] == [5, 3]
    assert [len(t) for t in decode(heads, out, lens, method="greedy", max_symbols=3).tokens] == [15, 9]


def test_ctc_greedy_collapses_repeats_and_scores_the_best_path() -> None:
    heads = AsrHeads(AsrConfig(vocab_size=4, decoder_dim=4, use_transducer=False), encoder_dim=4)
    with torch.no_grad():
        heads.ctc_head.weight.copy_(torch.eye(4) * 20.0)  # frame one-hot k -> token k
        heads.ctc_head.bias.zero_()
    path = torch.tensor([[1, 1, 0, 1, 2, 2, 3, 0], [3, 3, 3, 0, 0, 0, 0, 0]])
    out = torch.nn.functional.one_hot(path, 4).float()
    res = decode(heads, out, torch.tensor([8, 5]), method="ctc")
    assert res.tokens == [[1, 1, 2, 3], [3]]
    expected = torch.log_softmax(torch.tensor([20.0, 0, 0, 0]), 0)[0].item()
    assert res.log_probs == pytest.approx([8 * expected, 5 * expected], rel=1e-5)


def test_requests_the_heads_cannot_serve_are_refused() -> None:
    ctc_only = AsrHeads(AsrConfig(vocab_size=4, decoder_dim=4, use_transducer=False), encoder_dim=4)
    out, lens = torch.zeros(1, 3, 4), torch.tensor([3])
    with pytest.raises(ConfigError, match="no transducer"):
        decode(ctc_only, out, lens, method="greedy")
    with pytest.raises(ConfigError, match="method must be one of"):
        decode(ctc_only, out, lens, method="viterbi")
    with pytest.raises(ConfigError, match="beam and max_symbols must be >= 1"):
        decode(ctc_only, out, lens, method="beam", beam=0)
    assert isinstance(decode(ctc_only, out, lens, method="ctc"), DecodeResult)


def test_decoding_leaves_train_mode_and_gradients_alone() -> None:
    heads = _heads(vocab_size=5, seed=0).train()
    out, lens = _encoder_out([4], seed=0)
    res = decode(heads, out.requires_grad_(), lens, method="beam")
    assert heads.training and not math.isnan(res.log_probs[0])


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["greedy", "beam", "ctc"])
def test_cuda_decodes_what_the_cpu_decodes(method: str) -> None:
    heads = _heads(vocab_size=9, seed=7)
    out, lens = _encoder_out([11, 6, 9], seed=7)
    on_cpu = decode(heads, out, lens, method=method)
    on_gpu = decode(heads.cuda(), out.cuda(), lens.cuda(), method=method)
    assert on_gpu.tokens == on_cpu.tokens
    assert on_gpu.log_probs == pytest.approx(on_cpu.log_probs, abs=1e-3)
