"""Batched decoding of the ASR heads: transducer greedy and modified beam search, CTC greedy.

All three take the encoder output of a padded batch (``[B, T, D]`` and the
valid frames per cut) and return, per cut, the best token id list and its
log-probability under the model, so searches can be compared by score.

Scores follow the topology each search explores:

- transducer greedy with ``max_symbols=1`` (the default) and modified beam
  search emit at most one token per frame, and every frame contributes one
  log-probability (of the token or of blank): a hypothesis's score is the
  sum over frames. Beam 1 is then exactly greedy.
- greedy with ``max_symbols > 1`` may emit several tokens on a frame before
  its blank (the standard transducer topology); a frame that reaches the
  bound moves on without a blank.
- CTC greedy scores its best path: the sum of each frame's best log-probability.

Modified beam search (as used in icefall's recipes): on every frame each
hypothesis is extended by blank or by one token, the ``beam`` best
extensions over all hypotheses of the cut are kept, and extensions with the
same token sequence are merged by adding their probabilities (log-add). The
cut's answer is its highest-scoring hypothesis (no length normalisation).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch.nn import functional as F

from mt2kd.errors import ConfigError, ValidationError
from mt2kd.eval._asr import ctc_greedy_decode

BLANK_ID = 0  # the blank of the transducer and CTC heads
METHODS = ("greedy", "beam", "ctc")  # the decode() methods


@dataclasses.dataclass
class DecodeResult:
    """Best hypothesis per cut, in batch order."""

    tokens: list[list[int]]  # token ids (no blanks) of each cut's best hypothesis
    log_probs: list[float]  # its log-probability (natural log) under the search's topology


def decode(heads: Any, encoder_out: torch.Tensor, encoder_lens: torch.Tensor, method: str = "greedy",
           beam: int = 4, max_symbols: int = 1) -> DecodeResult:
    """Decode a padded batch with the ASR heads (``mt2kd.train.AsrHeads``).

    Parameters
    ----------
    heads : AsrHeads
        Trained heads; ``greedy``/``beam`` need the transducer, ``ctc`` the CTC head.
    encoder_out : tensor [B, T, D]
        Student encoder output (its last block), zero-padded.
    encoder_lens : tensor [B]
        Valid frames of each cut.
    method : {"greedy", "beam", "ctc"}
        Transducer greedy search, transducer modified beam search, or CTC greedy.
    beam : int
        Hypotheses kept per cut by ``beam``.
    max_symbols : int
        Tokens greedy search may emit on one frame (1 matches beam search's topology).

    Examples
    --------
    >>> out = student(fbank, num_frames)  # doctest: +SKIP
    >>> res = decode(heads, out.hidden_states[-1], out.num_frames, method="beam", beam=4)  # doctest: +SKIP
    >>> tokenizer.decode(res.tokens)  # doctest: +SKIP
    ['hello world', ...]
    """
    _check_inputs(encoder_out, encoder_lens, method, beam, max_symbols)
    was_training = heads.training
    heads.eval()
    try:
        with torch.no_grad():
            if method == "ctc":
                return ctc_greedy(heads, encoder_out, encoder_lens)
            if method == "beam":
                return modified_beam_search(heads, encoder_out, encoder_lens, beam)
            return greedy_search(heads, encoder_out, encoder_lens, max_symbols)
    finally:
        heads.train(was_training)


def _check_inputs(encoder_out: torch.Tensor, encoder_lens: torch.Tensor, method: str, beam: int,
                  max_symbols: int) -> None:
    if method not in METHODS:
        raise ConfigError(f"decoding method must be one of {list(METHODS)}. Got {method!r}.")
    if beam < 1 or max_symbols < 1:
        raise ConfigError(f"beam and max_symbols must be >= 1. Got beam={beam}, max_symbols={max_symbols}.")
    if encoder_out.dim() != 3 or encoder_lens.shape != (encoder_out.shape[0],):
        raise ValidationError(f"encoder_out must be [B, T, D] with encoder_lens [B]. Got {tuple(encoder_out.shape)} "
                              f"and {tuple(encoder_lens.shape)}.")
    if encoder_lens.numel() and int(encoder_lens.max()) > encoder_out.shape[1]:
        raise ValidationError(f"encoder_lens must not exceed the padded length {encoder_out.shape[1]}. "
                              f"Got {int(encoder_lens.max())}.")


def _predict(heads: Any, contexts: torch.Tensor) -> torch.Tensor:
    """Projected prediction-network output ``[N, joiner_dim]`` of ``[N, context_size]`` token contexts."""
    decoder, joiner = heads.transducer()
    return joiner.decoder_proj(decoder(contexts)[:, -1])


def _log_probs(heads: Any, enc_proj: torch.Tensor, dec_proj: torch.Tensor) -> torch.Tensor:
    joiner = heads.transducer()[1]
    return F.log_softmax(joiner(enc_proj, dec_proj).float(), dim=-1)


def greedy_search(heads: Any, encoder_out: torch.Tensor, encoder_lens: torch.Tensor,
                  max_symbols: int = 1) -> DecodeResult:
    """Transducer greedy search over a padded batch, at most ``max_symbols`` tokens per frame."""
    decoder, joiner = heads.transducer()
    num_cuts, device = encoder_out.shape[0], encoder_out.device
    enc = joiner.encoder_proj(encoder_out)
    contexts = torch.full((num_cuts, decoder.context_size), BLANK_ID, dtype=torch.int64, device=device)
    dec = _predict(heads, contexts)
    scores = torch.zeros(num_cuts, dtype=torch.float64, device=device)
    tokens: list[list[int]] = [[] for _ in range(num_cuts)]
    for t in range(int(encoder_lens.max()) if num_cuts else 0):
        rows = (encoder_lens > t).nonzero().squeeze(1)
        for _ in range(max_symbols):
            best_lp, best = _log_probs(heads, enc[rows, t], dec[rows]).max(dim=-1)
            scores[rows] += best_lp.double()
            emit = best != BLANK_ID
            rows, best = rows[emit], best[emit]
            if rows.numel() == 0:
                break
            for row, token in zip(rows.tolist(), best.tolist()):
                tokens[row].append(token)
            contexts[rows] = torch.cat([contexts[rows, 1:], best[:, None]], dim=1)
            dec[rows] = _predict(heads, contexts[rows])
    return DecodeResult(tokens, scores.tolist())


def modified_beam_search(heads: Any, encoder_out: torch.Tensor, encoder_lens: torch.Tensor,
                         beam: int = 4) -> DecodeResult:
    """Transducer modified beam search (one token per frame at most, merged hypotheses) over a padded batch."""
    joiner = heads.transducer()[1]
    num_cuts = encoder_out.shape[0]
    enc = joiner.encoder_proj(encoder_out)
    hyps: list[dict[tuple[int, ...], float]] = [{(): 0.0} for _ in range(num_cuts)]
    for t in range(int(encoder_lens.max()) if num_cuts else 0):
        active = (encoder_lens > t).nonzero().squeeze(1).tolist()
        kept = _beam_step(heads, enc[active, t], [hyps[i] for i in active], beam)
        for i, new in zip(active, kept):
            hyps[i] = new
    best = [max(h.items(), key=lambda item: item[1]) for h in hyps]
    return DecodeResult([list(tokens) for tokens, _ in best], [score for _, score in best])


def _beam_step(heads: Any, enc_t: torch.Tensor, hyps: list[dict[tuple[int, ...], float]],
               beam: int) -> list[dict[tuple[int, ...], float]]:
    """One frame for A cuts: extend each cut's (at most ``beam``) hypotheses, keep the best, merge."""
    num_active, device = len(hyps), enc_t.device
    context_size = heads.transducer()[0].context_size
    seqs = [list(h) for h in hyps]
    width = max(len(s) for s in seqs)
    padding = [BLANK_ID] * context_size
    # one row per (cut, hypothesis slot); empty slots get blank context and a -inf score
    contexts = torch.tensor([[(padding + list(tokens[-context_size:]))[-context_size:] for tokens in seq]
                             + [padding] * (width - len(seq)) for seq in seqs], dtype=torch.int64)
    scores = torch.tensor([[hyps[a][tokens] for tokens in seq] + [-math.inf] * (width - len(seq))
                           for a, seq in enumerate(seqs)], dtype=torch.float64)
    dec = _predict(heads, contexts.view(-1, context_size).to(device)).view(num_active, width, -1)
    log_probs = _log_probs(heads, enc_t[:, None], dec)  # [A, width, V]
    vocab = log_probs.shape[-1]
    candidates = (scores.to(device)[..., None] + log_probs.double()).view(num_active, -1)
    top_scores, top_index = candidates.topk(min(beam, candidates.shape[1]), dim=1)
    return [_merge(seq, s, i, vocab) for seq, s, i in zip(seqs, top_scores.tolist(), top_index.tolist())]


def _merge(seq: list[tuple[int, ...]], scores: list[float], indices: list[int],
           vocab: int) -> dict[tuple[int, ...], float]:
    """Kept extensions as ``tokens -> score``; equal token sequences add their probabilities."""
    merged: dict[tuple[int, ...], float] = {}
    for score, index in zip(scores, indices):
        if score == -math.inf:  # fewer live hypotheses than the beam
            continue
        tokens = seq[index // vocab]
        token = index % vocab
        if token != BLANK_ID:
            tokens = tokens + (token,)
        merged[tokens] = _log_add(merged[tokens], score) if tokens in merged else score
    return merged


def _log_add(a: float, b: float) -> float:
    """``log(exp(a) + exp(b))`` without overflow."""
    high, low = max(a, b), min(a, b)
    return high + math.log1p(math.exp(low - high))


def ctc_greedy(heads: Any, encoder_out: torch.Tensor, encoder_lens: torch.Tensor) -> DecodeResult:
    """CTC best path per cut (argmax, merge repeats, drop blanks) and its log-probability."""
    log_probs = heads.ctc_log_probs(encoder_out)
    best_lp = log_probs.max(dim=-1).values.double()
    ids = list(range(log_probs.shape[-1]))
    tokens, scores = [], []
    for i, n in enumerate(encoder_lens.tolist()):
        tokens.append(ctc_greedy_decode(log_probs[i, :n].cpu().numpy(), ids, blank=BLANK_ID))
        scores.append(float(best_lp[i, :n].sum()))
    return DecodeResult(tokens, scores)
