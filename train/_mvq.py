"""The MVQ KD target: student frames -> one 256-way classifier per codebook, cross-entropy against stored codes.

A codes teacher (``store quantize``, or extraction with ``mvq=``) stores each
frame as ``num_codebooks`` uint8 indexes. The student learns them with
:class:`MvqHead` (one linear layer giving ``num_codebooks x 256`` logits a
frame) and :func:`mvq_loss` (mean cross-entropy over the valid aligned
frames and the codebooks, masked by target presence and aligned by
:func:`align_frames`, like the L1 target). :func:`expected_frames` turns the
head's distributions back into frames with the quantiser's codebooks (the
expected sum of centres), which is how a student trained on codes is
scored against float teacher frames (held-out L1).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

CODEBOOK_SIZE = 256  # one byte per codebook


class MvqHead(nn.Module):
    """``[B, T, D]`` student frames to ``[B, T, num_codebooks, 256]`` logits.

    Examples
    --------
    >>> head = MvqHead(32, 8)
    >>> head(torch.zeros(2, 5, 32)).shape
    torch.Size([2, 5, 8, 256])
    """

    def __init__(self, model_dim: int, num_codebooks: int, codebook_size: int = CODEBOOK_SIZE) -> None:
        super().__init__()
        self.num_codebooks, self.codebook_size = num_codebooks, codebook_size
        self.proj = nn.Linear(model_dim, num_codebooks * codebook_size)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        logits = self.proj(frames)
        return logits.view(*frames.shape[:-1], self.num_codebooks, self.codebook_size)


def mvq_head_dim(num_codebooks: int) -> int:
    """Logits a frame for codes of ``num_codebooks`` codebooks: 256 each."""
    return num_codebooks * CODEBOOK_SIZE


def mvq_cross_entropy(student: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of aligned logits ``[B, T, N x 256]`` against codes ``[B, T, N]`` over ``mask`` ``[B, T]``.

    The loss of a KD target on a codes teacher: the head gives 256 logits
    per codebook, the codes (any integer or float dtype holding 0..255) are
    the classes. 0 (tied to the graph) when ``mask`` is all False.
    """
    num_codebooks = codes.shape[-1]
    if student.shape[-1] != num_codebooks * CODEBOOK_SIZE:
        from mt2kd.errors import ConfigError

        raise ConfigError(f"an MVQ head must give {CODEBOOK_SIZE} logits per codebook ({num_codebooks} x "
                          f"{CODEBOOK_SIZE} = {num_codebooks * CODEBOOK_SIZE}). Got {student.shape[-1]}.")
    if not bool(mask.any()):
        return student.sum() * 0.0
    logits = student[mask].reshape(-1, CODEBOOK_SIZE).float()
    return F.cross_entropy(logits, codes.to(student.device)[mask].reshape(-1).long())


def mvq_loss(logits: torch.Tensor, num_frames: torch.Tensor, target: dict[str, torch.Tensor] | None) -> torch.Tensor:
    """:func:`mvq_cross_entropy` of :class:`MvqHead` logits ``[B, T, N, 256]`` and the loader's target of a codes teacher.

    ``target`` is ``{"values" [B, Tt, N] uint8, "lengths", "present"}``;
    frames are aligned by :func:`align_frames`. 0 when no cut has codes.
    """
    from mt2kd.train._losses import align_frames  # _losses registers this module's loss: import it late

    if target is None:
        return logits.sum() * 0.0
    lengths = target["lengths"] * target["present"].to(target["lengths"].dtype)
    b, t, n, k = logits.shape
    s, codes, mask = align_frames(logits.reshape(b, t, n * k), num_frames, target["values"].to(logits.device),
                                  lengths)
    return mvq_cross_entropy(s, codes, mask)


def expected_frames(logits: torch.Tensor, codebooks: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Frames ``[..., dim]``: the expected sum of codebook centres under the head's distributions.

    ``codebooks`` is ``[num_codebooks, 256, dim]``, the scaled centres
    (``mt2kd.store.Quantizer.codebooks``).
    """
    centres = torch.as_tensor(codebooks, dtype=torch.float32, device=logits.device)
    probs = logits.float().softmax(dim=-1)  # [..., N, K]
    return torch.einsum("...nk,nkd->...d", probs, centres)
