"""Stage-2 supervised losses on the student's own heads: event tagging (BCE) and speaker classification.

- Tagging: BCE between M_AT logits and the cut's multi-hot event labels,
  mean over classes and over the labelled cuts of the batch.
- Speaker: a classification layer over the training speakers after M_SV.
  Softmax cross-entropy by default; additive angular margin softmax (AAM,
  "ArcFace") as an option: the logit of class j is ``s * cos(theta_j)`` with
  the embedding and the class weight L2-normalised, and the target class's
  angle is widened by the margin, ``s * cos(theta_y + m)``. Past
  ``theta_y = pi - m`` (where ``cos(theta + m)`` would turn back up) the target
  logit continues as ``s * (cos(theta_y) - m * sin(m))``, so the loss keeps
  growing with the angle.

As in stage 1, a term no cut of the batch has is exactly 0 yet tied to the
graph (DDP then sees a gradient for every parameter), never NaN.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def zero_of(module: nn.Module, like: torch.Tensor) -> torch.Tensor:
    """0, tied to every trainable parameter of ``module`` (and to ``like``) so DDP sees them used."""
    total = like.sum() * 0.0
    for p in module.parameters():
        if p.requires_grad:
            total = total + p.sum() * 0.0
    return total


def tagging_loss(at_logits: torch.Tensor, labels: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """BCE of M_AT logits ``[B, C]`` against multi-hot ``labels`` ``[B, C]`` over cuts where ``present``."""
    if not bool(present.any()):
        return at_logits.sum() * 0.0
    per_cut = F.binary_cross_entropy_with_logits(at_logits.float(), labels.float(), reduction="none").mean(-1)
    weights = present.to(per_cut.dtype)
    return (per_cut * weights).sum() / weights.sum()


def aam_logits(cosine: torch.Tensor, targets: torch.Tensor, margin: float, scale: float) -> torch.Tensor:
    """AAM-softmax logits from cosines ``[B, K]`` and target classes ``[B]`` (module docstring).

    Examples
    --------
    >>> aam_logits(torch.tensor([[1.0, 0.0]]), torch.tensor([1]), 0.5, 2.0).round(decimals=4).tolist()
    [[2.0, -0.9589]]
    """
    cosine = cosine.float().clamp(-1.0, 1.0)
    sine = torch.sqrt((1.0 - cosine**2).clamp_min(0.0))
    widened = cosine * math.cos(margin) - sine * math.sin(margin)  # cos(theta + m)
    past_turn = cosine <= math.cos(math.pi - margin)  # theta + m beyond pi
    widened = torch.where(past_turn, cosine - margin * math.sin(margin), widened)
    one_hot = F.one_hot(targets, cosine.shape[-1]).bool()
    return scale * torch.where(one_hot, widened, cosine)


class SpeakerClassifier(nn.Module):
    """Speaker layer over M_SV embeddings: ``num_speakers`` logits, CE or AAM-softmax loss.

    Examples
    --------
    >>> head = SpeakerClassifier(192, 10, "aam", margin=0.2, scale=30.0)
    >>> head.loss(torch.randn(4, 192), torch.tensor([0, 3, -1, 9])).shape
    torch.Size([])
    """

    def __init__(self, embedding_dim: int, num_speakers: int, loss: str = "ce",
                 margin: float = 0.2, scale: float = 30.0) -> None:
        super().__init__()
        self.kind = loss
        self.margin = margin
        self.scale = scale
        self.weight = nn.Parameter(torch.empty(num_speakers, embedding_dim))
        nn.init.xavier_uniform_(self.weight)
        self.bias = nn.Parameter(torch.zeros(num_speakers)) if loss == "ce" else None

    def cosine(self, embedding: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(embedding.float(), dim=-1), F.normalize(self.weight.float(), dim=-1))

    def logits(self, embedding: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Class scores ``[B, K]``; for AAM with ``targets`` the margin-widened ones the loss uses."""
        if self.kind == "ce":
            return F.linear(embedding.float(), self.weight.float(), self.bias)
        if targets is None:
            return self.scale * self.cosine(embedding)
        return aam_logits(self.cosine(embedding), targets, self.margin, self.scale)

    def loss(self, embedding: torch.Tensor, speakers: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over cuts with a speaker (``speakers`` ``[B]``, -1 where none)."""
        present = speakers >= 0
        if not bool(present.any()):
            return zero_of(self, embedding)
        kept = speakers[present]
        return F.cross_entropy(self.logits(embedding[present], kept), kept)
