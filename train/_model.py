"""The student: an encoder (Conformer blocks after a 4x conv front-end, or a Zipformer), one head per KD target.

The heads read only the encoder's ``hidden_states`` (``mt2kd.train._heads``);
the default ones are the paper's three:

- M_ASR: linear from the last block to the teacher frame dim (2560).
- M_AT: linear to 527 class logits per frame, averaged over valid frames.
- M_SV: attentive statistics pooling over an intermediate block -> 192.

Padding never leaks into valid frames (every module masks what it mixes
over time), so a cut's outputs do not depend on what else is in its batch.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from torch.nn import functional as F

from mt2kd.errors import ConfigError
from mt2kd.train._config import StudentConfig
from mt2kd.train._features import num_student_frames
from mt2kd.train._heads import HEADS, AttentiveStatsPooling, build_heads, head_block, rename_legacy_keys
from mt2kd.train._zipformer import ZipformerEncoder

__all__ = ["Student", "StudentOutput", "AttentiveStatsPooling", "count_parameters"]

FBANK_OFFSET = 15.0  # rough mean of int16-scale log-mel energies of speech
FBANK_SCALE = 5.0  # rough spread of the same; the front-end learns the rest


@dataclasses.dataclass
class StudentOutput:
    """Everything one forward pass produces (B cuts, T frames at 25 Hz).

    ``frames``, ``at_logits`` and ``sv_embedding`` are the outputs of the
    first ``frames``, ``mean`` and ``attentive`` head (M_ASR, M_AT, M_SV).
    """

    outputs: dict[str, torch.Tensor]  # head (KD target) name -> [B, T, dim] frames or [B, dim] per cut
    head_kinds: dict[str, str]  # head name -> its kind, a key of HEADS
    frame_mask: torch.Tensor  # [B, T] bool, True on valid frames
    hidden_states: list[torch.Tensor]  # [B, T, D] per Conformer block / Zipformer stack (full width, 25 Hz)
    num_frames: torch.Tensor  # [B] valid frames per cut

    def first_of(self, kind: str) -> torch.Tensor:
        """The output of the first head of ``kind``; a ConfigError naming the heads when there is none."""
        for name, head_kind in self.head_kinds.items():
            if head_kind == kind:
                return self.outputs[name]
        raise ConfigError(f"the student must have a {kind!r} head for this. Got heads {self.head_kinds}.")

    @property
    def frames(self) -> torch.Tensor:
        return self.first_of("frames")

    @property
    def at_logits(self) -> torch.Tensor:
        return self.first_of("mean")

    @property
    def sv_embedding(self) -> torch.Tensor:
        return self.first_of("attentive")


def _lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class ConvFrontEnd(nn.Module):
    """Two stride-2 3x3 convolutions over (time, freq): 100 Hz -> 25 Hz."""

    def __init__(self, cfg: StudentConfig) -> None:
        super().__init__()
        c = cfg.frontend_channels
        self.conv1 = nn.Conv2d(1, c, kernel_size=3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(c, c, kernel_size=3, stride=2, padding=1)
        freq = ((cfg.input_dim + 1) // 2 + 1) // 2
        self.proj = nn.Linear(c * freq, cfg.model_dim)

    def forward(self, fbank: torch.Tensor, num_frames: torch.Tensor) -> torch.Tensor:
        x = (fbank - FBANK_OFFSET) / FBANK_SCALE
        x = x * _lengths_to_mask(num_frames, x.shape[1])[..., None]
        x = F.silu(self.conv1(x[:, None]))  # [B, C, T/2, F/2]
        half = (num_frames + 1) // 2
        # zero the frames past each cut's end so conv2 sees the same padding as a cut alone
        x = x * _lengths_to_mask(half, x.shape[2])[:, None, :, None]
        x = F.silu(self.conv2(x))  # [B, C, T/4, F/4]
        b, c, t, f = x.shape
        return self.proj(x.permute(0, 2, 1, 3).reshape(b, t, c * f))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.SiLU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.num_heads = num_heads
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, t, 3, self.num_heads, d // self.num_heads).unbind(2)
        attn_mask = mask[:, None, None, :]  # keys past the end are never attended to
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
            attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class ConvModule(nn.Module):
    """Pointwise-GLU, depthwise conv over time, LayerNorm (not BatchNorm: batch-invariant), pointwise."""

    def __init__(self, dim: int, kernel: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.pointwise_in = nn.Linear(dim, 2 * dim)
        self.depthwise = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.mid_norm = nn.LayerNorm(dim)
        self.pointwise_out = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = F.glu(self.pointwise_in(self.norm(x)), dim=-1) * mask[..., None]
        y = self.depthwise(y.transpose(1, 2)).transpose(1, 2)
        return self.drop(self.pointwise_out(F.silu(self.mid_norm(y))))


class ConformerBlock(nn.Module):
    """Macaron FFN/2, self-attention, convolution, FFN/2, final LayerNorm."""

    def __init__(self, cfg: StudentConfig) -> None:
        super().__init__()
        d = cfg.model_dim
        self.ffn1 = FeedForward(d, cfg.ffn_dim, cfg.dropout)
        self.attn = SelfAttention(d, cfg.num_heads, cfg.dropout)
        self.conv = ConvModule(d, cfg.conv_kernel, cfg.dropout)
        self.ffn2 = FeedForward(d, cfg.ffn_dim, cfg.dropout)
        self.norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.drop(self.ffn1(x))
        x = x + self.drop(self.attn(x, mask))
        x = x + self.conv(x, mask)
        x = x + 0.5 * self.drop(self.ffn2(x))
        return self.norm(x) * mask[..., None]


def _sinusoids(num_frames: int, dim: int, device: torch.device) -> torch.Tensor:
    pos = torch.arange(num_frames, device=device, dtype=torch.float32)[:, None]
    freqs = torch.exp(torch.arange(0, dim, 2, device=device) * (-math.log(10_000.0) / dim))
    pe = torch.zeros(num_frames, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * freqs)
    pe[:, 1::2] = torch.cos(pos * freqs[: dim // 2])
    return pe


class Student(nn.Module):
    """Student encoder (``config.encoder``: Conformer or Zipformer) with one head per KD target.

    Examples
    --------
    >>> model = Student(StudentConfig.preset("tiny"))
    >>> out = model(torch.zeros(2, 100, 80), torch.tensor([100, 60]))
    >>> out.frames.shape, out.at_logits.shape, out.sv_embedding.shape
    (torch.Size([2, 25, 2560]), torch.Size([2, 527]), torch.Size([2, 192]))
    """

    def __init__(self, config: StudentConfig) -> None:
        super().__init__()
        self.config = config
        if config.zipformer is not None:
            self.zipformer = ZipformerEncoder(config.zipformer, config.input_dim)
        else:
            self.frontend = ConvFrontEnd(config)
            self.blocks = nn.ModuleList(ConformerBlock(config) for _ in range(config.num_blocks))
        self.head_configs = config.resolved_heads()
        for head in self.head_configs:
            if head.kind not in HEADS:
                raise ConfigError(f"head {head.name!r}: kind must be one of {sorted(HEADS)}. Got {head.kind!r}.")
            if not 0 <= head_block(head, config.num_outputs) < config.num_outputs:
                raise ConfigError(f"head {head.name!r}: block must be in [1, {config.num_outputs}] or "
                                  f"[-{config.num_outputs}, -1]. Got {head.block}.")
        self.heads = build_heads(config)
        self._register_load_state_dict_pre_hook(_legacy_keys_hook)

    def _conformer(self, fbank: torch.Tensor, num_frames: torch.Tensor
                   ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        x = self.frontend(fbank, num_frames)
        lengths = num_student_frames(num_frames)
        mask = _lengths_to_mask(lengths, x.shape[1])
        x = (x + _sinusoids(x.shape[1], x.shape[2], x.device).to(x.dtype)) * mask[..., None]
        hidden = []
        for block in self.blocks:
            x = block(x, mask)
            hidden.append(x)
        return hidden, mask, lengths

    def encode(self, fbank: torch.Tensor, num_frames: torch.Tensor
               ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Every block's (or stack's) output ``[B, T, D]``, the valid-frame mask ``[B, T]`` and lengths ``[B]``.

        This is all the heads read, so a target's ``block`` means the same
        for every encoder: the 1-based entry of this list.
        """
        if self.config.zipformer is not None:
            states = self.zipformer((fbank - FBANK_OFFSET) / FBANK_SCALE, num_frames)
            return states.hidden_states, states.mask, states.lengths
        return self._conformer(fbank, num_frames)

    def forward(self, fbank: torch.Tensor, num_frames: torch.Tensor) -> StudentOutput:
        """``fbank`` ``[B, T100, 80]`` zero-padded, ``num_frames`` ``[B]`` valid 100 Hz frames."""
        hidden, mask, lengths = self.encode(fbank, num_frames)
        outputs = {h.name: self.heads[h.name](hidden[head_block(h, len(hidden))], mask, lengths)
                   for h in self.head_configs}
        return StudentOutput(outputs=outputs, head_kinds={h.name: h.kind for h in self.head_configs},
                             frame_mask=mask, hidden_states=hidden, num_frames=lengths)


def _legacy_keys_hook(state_dict: dict[str, torch.Tensor], prefix: str, *args: object) -> None:
    rename_legacy_keys(state_dict, prefix)  # a fixed-head checkpoint (asr_head, at_head, sv_*) loads as is


def count_parameters(config: StudentConfig) -> int:
    """Parameters of a student built from ``config``, counted on the meta device (no memory)."""
    with torch.device("meta"):
        model = Student(config)
    return sum(p.numel() for p in model.parameters())
