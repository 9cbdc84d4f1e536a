"""ASR heads on the student encoder: a stateless transducer and a CTC layer, and their losses.

The transducer's prediction network is *stateless* (Ghodsi et al., 2020):
an embedding of the last ``context_size`` tokens mixed by one grouped
Conv1d, instead of an LSTM over the whole history. The joiner adds a
projection of one encoder frame and one prediction-network output, applies
tanh and maps to the vocabulary. The CTC head is one linear layer. Either
head may be switched off; the loss is their weighted sum.

Token id 0 is the blank of both heads (see :mod:`mt2kd.train._tokenizer`);
it also fills the prediction network's context before the first token.

Memory of the transducer loss
-----------------------------
The joiner is evaluated on every (frame, token position) pair of the padded
batch: a ``[B, T, U+1, V]`` float32 logit tensor (``T`` encoder frames at
25 Hz, ``U`` tokens of the longest transcript, ``V`` vocabulary), whose
gradient ``rnnt_loss`` computes during the forward pass and keeps (the same
size again), plus the ``[B, T, U+1, joiner_dim]`` tanh activations and their
gradient. So about ``B·T·(U+1)·(2·V + 2·joiner_dim)·4`` bytes: 32 cuts of
15 s (T = 375) with U = 100 BPE tokens, V = 500 and joiner_dim = 512 take
about 9.8 GB. :func:`transducer_memory_bytes` gives the figure for a batch,
so a trainer can keep batches within a budget.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from mt2kd.errors import ConfigError, ValidationError
from mt2kd.train._asr_config import DECODER_GROUP_SIZE, AsrConfig  # torch-free: CLI flags derive from it

BLANK_ID = 0  # the blank of the transducer and CTC (the tokenizer's <blk>)
FLOAT32_BYTES = 4


class StatelessDecoder(nn.Module):
    """Prediction network: embed the last ``context_size`` tokens, mix them with a grouped conv, ReLU."""

    def __init__(self, cfg: AsrConfig) -> None:
        super().__init__()
        self.context_size = cfg.context_size
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.decoder_dim)
        self.conv = nn.Conv1d(cfg.decoder_dim, cfg.decoder_dim, kernel_size=cfg.context_size,
                              groups=cfg.decoder_dim // DECODER_GROUP_SIZE, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` ``[N, L]`` (L >= context_size) -> ``[N, L - context_size + 1, decoder_dim]``.

        Output ``i`` sees tokens ``i .. i + context_size - 1``: callers put the
        context first (blanks before the first token).
        """
        x = self.embedding(tokens).transpose(1, 2)
        return F.relu(self.conv(x).transpose(1, 2))

    def with_context(self, token_ids: torch.Tensor) -> torch.Tensor:
        """``[B, U]`` padded tokens -> ``[B, U + 1, decoder_dim]``: output ``u`` predicts token ``u``."""
        pad = token_ids.new_full((token_ids.shape[0], self.context_size), BLANK_ID)
        return self(torch.cat([pad, token_ids], dim=1))


class Joiner(nn.Module):
    """``tanh(enc_proj(frame) + dec_proj(prediction))`` -> vocabulary logits."""

    def __init__(self, encoder_dim: int, cfg: AsrConfig) -> None:
        super().__init__()
        self.encoder_proj = nn.Linear(encoder_dim, cfg.joiner_dim)
        self.decoder_proj = nn.Linear(cfg.decoder_dim, cfg.joiner_dim)
        self.output = nn.Linear(cfg.joiner_dim, cfg.vocab_size)

    def forward(self, encoder_proj: torch.Tensor, decoder_proj: torch.Tensor) -> torch.Tensor:
        """Already projected inputs that broadcast against each other -> logits ``[..., V]``."""
        return self.output(torch.tanh(encoder_proj + decoder_proj))


class AsrHeads(nn.Module):
    """The ASR heads over encoder frames ``[B, T, encoder_dim]``.

    Examples
    --------
    >>> heads = AsrHeads(AsrConfig(vocab_size=10, decoder_dim=8, joiner_dim=8), encoder_dim=16)
    >>> losses = heads.loss(torch.randn(2, 20, 16), torch.tensor([20, 12]), [[3, 4, 5], [6]])
    >>> sorted(losses)
    ['asr', 'ctc', 'transducer']
    """

    def __init__(self, cfg: AsrConfig, encoder_dim: int) -> None:
        super().__init__()
        self.config = cfg
        self.encoder_dim = encoder_dim
        self.decoder = StatelessDecoder(cfg) if cfg.use_transducer else None
        self.joiner = Joiner(encoder_dim, cfg) if cfg.use_transducer else None
        self.ctc_head = nn.Linear(encoder_dim, cfg.vocab_size) if cfg.use_ctc else None

    def loss(self, encoder_out: torch.Tensor, encoder_lens: torch.Tensor,
             token_ids: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """Named losses, each a mean over cuts: ``transducer``/``ctc`` (those built) and their weighted ``asr`` sum.

        ``encoder_out`` ``[B, T, D]`` zero-padded, ``encoder_lens`` ``[B]`` valid
        frames, ``token_ids`` one id list per cut (no blanks).
        """
        targets, target_lens = self._targets(encoder_out, encoder_lens, token_ids)
        cfg = self.config
        losses: dict[str, torch.Tensor] = {}
        total = encoder_out.new_zeros((), dtype=torch.float32)
        if self.joiner is not None:
            losses["transducer"] = self.transducer_loss(encoder_out, encoder_lens, targets, target_lens)
            total = total + cfg.transducer_weight * losses["transducer"]
        if self.ctc_head is not None:
            losses["ctc"] = self.ctc_loss(encoder_out, encoder_lens, targets, target_lens)
            total = total + cfg.ctc_weight * losses["ctc"]
        losses["asr"] = total
        return losses

    def _targets(self, encoder_out: torch.Tensor, encoder_lens: torch.Tensor,
                 token_ids: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        if encoder_out.dim() != 3 or encoder_out.shape[2] != self.encoder_dim:
            raise ValidationError(f"encoder_out must be [B, T, {self.encoder_dim}]. Got {tuple(encoder_out.shape)}.")
        if encoder_out.shape[0] == 0:
            raise ValidationError("the ASR loss needs at least one cut. Got an empty batch.")
        if len(token_ids) != encoder_out.shape[0] or encoder_lens.shape != (encoder_out.shape[0],):
            raise ValidationError(f"encoder_lens and token_ids must give one entry per cut ({encoder_out.shape[0]}). "
                                  f"Got {tuple(encoder_lens.shape)} and {len(token_ids)}.")
        return pad_tokens(token_ids, self.config.vocab_size, encoder_out.device)

    def transducer(self) -> tuple[StatelessDecoder, Joiner]:
        """The prediction network and joiner; a ConfigError when the heads were built without them."""
        if self.decoder is None or self.joiner is None:
            raise ConfigError("these ASR heads have no transducer (use_transducer is false). Got a transducer "
                              "request.")
        return self.decoder, self.joiner

    def transducer_loss(self, encoder_out: torch.Tensor, encoder_lens: torch.Tensor, targets: torch.Tensor,
                        target_lens: torch.Tensor) -> torch.Tensor:
        """``torchaudio.functional.rnnt_loss`` on float32 joiner logits, mean over cuts."""
        from torchaudio.functional import rnnt_loss

        decoder, joiner = self.transducer()
        num_frames = int(encoder_lens.max())
        with torch.autocast(encoder_out.device.type, enabled=False):  # [B, T, U+1, V] logits in float32
            enc = joiner.encoder_proj(encoder_out[:, :num_frames].float())
            dec = joiner.decoder_proj(decoder.with_context(targets).float())
            logits = joiner(enc[:, :, None], dec[:, None])
            return rnnt_loss(logits, targets.int(), encoder_lens.int(), target_lens.int(), blank=BLANK_ID,
                             reduction="mean")

    def transducer_logits(self, encoder_frames: torch.Tensor, decoder_out: torch.Tensor) -> torch.Tensor:
        """Joiner logits of encoder frames ``[..., D]`` and prediction outputs ``[..., decoder_dim]`` (broadcast)."""
        joiner = self.transducer()[1]
        return joiner(joiner.encoder_proj(encoder_frames), joiner.decoder_proj(decoder_out))

    def ctc_log_probs(self, encoder_out: torch.Tensor) -> torch.Tensor:
        """Float32 log-probabilities ``[B, T, V]`` of the CTC head."""
        if self.ctc_head is None:
            raise ConfigError("these ASR heads have no CTC head (use_ctc is false). Got a CTC request.")
        return F.log_softmax(self.ctc_head(encoder_out).float(), dim=-1)

    def ctc_loss(self, encoder_out: torch.Tensor, encoder_lens: torch.Tensor, targets: torch.Tensor,
                 target_lens: torch.Tensor) -> torch.Tensor:
        """``torch.nn.functional.ctc_loss`` summed per cut, mean over cuts.

        A cut with more tokens than frames cannot be aligned; its loss is
        zeroed (``zero_infinity``) rather than making the batch infinite.
        """
        log_probs = self.ctc_log_probs(encoder_out).transpose(0, 1)  # [T, B, V]
        summed = F.ctc_loss(log_probs, targets, encoder_lens, target_lens, blank=BLANK_ID, reduction="sum",
                            zero_infinity=True)
        return summed / encoder_out.shape[0]


def pad_tokens(token_ids: Sequence[Sequence[int]], vocab_size: int,
               device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> ``([B, max U] int64 padded with blank, [B] lengths)``; ids checked against the vocabulary."""
    lens = [len(ids) for ids in token_ids]
    targets = torch.full((len(token_ids), max(lens, default=0)), BLANK_ID, dtype=torch.int64)
    for i, ids in enumerate(token_ids):
        row = torch.as_tensor(list(ids), dtype=torch.int64)
        if len(row) and (int(row.min()) < 1 or int(row.max()) >= vocab_size):
            raise ValidationError(f"token ids of cut {i} must be in [1, {vocab_size}) (0 is the blank). "
                                  f"Got min {int(row.min())}, max {int(row.max())}.")
        targets[i, :len(row)] = row
    return targets.to(device), torch.tensor(lens, dtype=torch.int64, device=device)


def transducer_memory_bytes(num_frames: Sequence[int], num_tokens: Sequence[int], cfg: AsrConfig) -> int:
    """Bytes the transducer loss of one padded batch holds at its peak (see the module docstring).

    ``num_frames`` are the cuts' encoder frames (25 Hz), ``num_tokens`` their
    transcript lengths; padding counts, since the joiner runs on it too.

    Examples
    --------
    >>> cfg = AsrConfig(vocab_size=500, joiner_dim=512)
    >>> round(transducer_memory_bytes([375] * 32, [100] * 32, cfg) / 1e9, 1)  # 32 cuts of 15 s
    9.8
    """
    if not num_frames:
        return 0
    b, t, u1 = len(num_frames), max(num_frames), max(num_tokens, default=0) + 1
    return b * t * u1 * (2 * cfg.vocab_size + 2 * cfg.joiner_dim) * FLOAT32_BYTES
