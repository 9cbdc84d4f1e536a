"""Stage-1 KD losses and the one rule that aligns student and teacher frames.

- whisper: L1 between M_ASR frames and stacked teacher frames, mean over the
  valid aligned frames of the batch and over the 2560 dims;
- beats: BCE between M_AT logits and sigmoid(teacher logits), mean over
  classes and over cuts that have the target;
- ecapa: 1 - cosine between M_SV and the teacher embedding, mean over cuts
  that have the target.

Every term is masked by target presence; a term none of the batch's cuts has
is exactly 0 (still tied to the graph, so DDP sees a gradient for every
parameter), never NaN.
"""

from __future__ import annotations

import dataclasses

import torch
from torch.nn import functional as F

from mt2kd.train._model import StudentOutput


def align_frames(
    student: torch.Tensor,
    student_lengths: torch.Tensor,
    teacher: torch.Tensor,
    teacher_lengths: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Align student 25 Hz frames with stacked teacher frames.

    The two frame counts of a cut differ by a frame or so (different
    front-ends round differently). The rule: truncate both to the shorter,
    mask the rest. This is the only place that rule lives.

    Parameters
    ----------
    student, teacher:
        ``[B, Ts, D]`` and ``[B, Tt, D]``, zero-padded.
    student_lengths, teacher_lengths:
        ``[B]`` valid frames per cut (a teacher length of 0 means no target).

    Returns
    -------
    (student, teacher, mask)
        Both cut to ``T = min(Ts, Tt)`` frames, and a bool ``[B, T]`` mask that
        is True where ``t < min(student_length, teacher_length)``.

    Examples
    --------
    >>> s, t, m = align_frames(torch.zeros(1, 5, 2), torch.tensor([5]), torch.zeros(1, 4, 2), torch.tensor([3]))
    >>> s.shape, t.shape, m.tolist()
    (torch.Size([1, 4, 2]), torch.Size([1, 4, 2]), [[True, True, True, False]])
    """
    num_frames = min(student.shape[1], teacher.shape[1])
    lengths = torch.minimum(student_lengths, teacher_lengths).to(student.device)
    mask = torch.arange(num_frames, device=student.device)[None, :] < lengths[:, None]
    return student[:, :num_frames], teacher[:, :num_frames], mask


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """lambda_1..3 and which store teacher feeds which head."""

    whisper: float = 1.0  # lambda_1
    beats: float = 1.0  # lambda_2
    ecapa: float = 1.0  # lambda_3
    whisper_teacher: str = "whisper"  # frames teacher for M_ASR
    beats_teacher: str = "beats"  # clip logits teacher for M_AT
    ecapa_teacher: str = "ecapa"  # clip embedding teacher for M_SV


def _zero(like: torch.Tensor) -> torch.Tensor:
    return like.sum() * 0.0


def whisper_loss(out: StudentOutput, target: dict[str, torch.Tensor] | None) -> torch.Tensor:
    """Masked L1, mean over valid aligned frames and dims; 0 when no cut has frames."""
    if target is None:
        return _zero(out.frames)
    lengths = target["lengths"] * target["present"].to(target["lengths"].dtype)
    s, t, mask = align_frames(out.frames, out.num_frames, target["values"].to(out.frames.device), lengths)
    num_valid = mask.sum()
    if int(num_valid) == 0:
        return _zero(out.frames)
    diff = (s.float() - t.float()).abs() * mask[..., None]
    return diff.sum() / (num_valid * s.shape[-1])


def beats_loss(out: StudentOutput, target: dict[str, torch.Tensor] | None) -> torch.Tensor:
    """BCE(student logits, sigmoid(teacher logits)) over cuts that have the target."""
    if target is None or not bool(target["present"].any()):
        return _zero(out.at_logits)
    present = target["present"].to(out.at_logits.device)
    probs = torch.sigmoid(target["values"].to(out.at_logits.device).float())
    per_cut = F.binary_cross_entropy_with_logits(out.at_logits.float(), probs, reduction="none").mean(-1)
    return (per_cut * present).sum() / present.sum()


def ecapa_loss(out: StudentOutput, target: dict[str, torch.Tensor] | None) -> torch.Tensor:
    """Mean of 1 - cos(student, teacher) over cuts that have the target."""
    if target is None or not bool(target["present"].any()):
        return _zero(out.sv_embedding)
    present = target["present"].to(out.sv_embedding.device)
    teacher = target["values"].to(out.sv_embedding.device).float()
    per_cut = 1.0 - F.cosine_similarity(out.sv_embedding.float(), teacher, dim=-1, eps=1e-6)
    return (per_cut * present).sum() / present.sum()


def kd_losses(
    out: StudentOutput, targets: dict[str, dict[str, torch.Tensor]], weights: LossWeights
) -> dict[str, torch.Tensor]:
    """Each KD term and their weighted sum under ``"total"``.

    ``targets`` maps a store teacher name to ``{"values", "present"}`` (and
    ``"lengths"`` for frames), as the loader builds it.

    Examples
    --------
    >>> losses = kd_losses(model(fbank, num_frames), batch["targets"], LossWeights())  # doctest: +SKIP
    >>> losses["total"].backward()  # doctest: +SKIP
    """
    terms = {
        "whisper": whisper_loss(out, targets.get(weights.whisper_teacher)),
        "beats": beats_loss(out, targets.get(weights.beats_teacher)),
        "ecapa": ecapa_loss(out, targets.get(weights.ecapa_teacher)),
    }
    terms["total"] = (
        weights.whisper * terms["whisper"] + weights.beats * terms["beats"] + weights.ecapa * terms["ecapa"]
    )
    return terms
