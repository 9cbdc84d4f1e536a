"""KD losses as a registry, the frame-rate relation, and the one rule that aligns student and teacher frames.

Each :class:`KDTarget` names a loss kind of :data:`LOSSES`. Every loss takes
the student head's output, the teacher's targets and a bool mask of what
counts (valid aligned frames ``[B, T]`` for a frames teacher, cuts that have
the target ``[B]`` for a clip teacher) and returns a mean over what counts:

- ``l1``: mean absolute difference over valid frames (or cuts) and dims;
- ``mse``: mean squared difference, likewise;
- ``l1_logsigmoid_cos``: DistilHuBERT's L1 (mean over dims) minus
  log sigmoid of the cosine similarity, per frame, mean over frames;
- ``bce``: BCE between student logits and sigmoid(teacher logits), mean over
  classes, then over cuts (or frames);
- ``cos``: 1 - cosine similarity, mean over cuts (or frames);
- ``mvq``: cross-entropy of 256-way classifiers (one per codebook, a head of
  ``num_codebooks x 256``) against a codes teacher's MVQ codes, mean over
  valid frames and codebooks (``train/_mvq.py``).

The paper's terms: whisper ``l1``, beats ``bce``, ecapa ``cos``. A term none
of the batch's cuts has is exactly 0 (still tied to the graph, so DDP sees a
gradient for every parameter), never NaN. A new loss kind is one
:class:`LossKind` entry in :data:`LOSSES`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.nn import functional as F

from mt2kd.errors import ConfigError
from mt2kd.train._config import HeadConfig
from mt2kd.train._heads import HEADS
from mt2kd.train._model import StudentOutput
from mt2kd.train._mvq import mvq_cross_entropy, mvq_head_dim
from mt2kd.train._targets import STUDENT_FRAME_RATE, KDTarget

log = logging.getLogger(__name__)


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


def _masked_mean(per_item: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (per_item * mask).sum() / mask.sum()


def l1_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference over what ``mask`` keeps and over the dims."""
    diff = (student.float() - teacher.float()).abs() * mask[..., None]
    return diff.sum() / (mask.sum() * student.shape[-1])


def mse_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared difference over what ``mask`` keeps and over the dims."""
    diff = (student.float() - teacher.float()).square() * mask[..., None]
    return diff.sum() / (mask.sum() * student.shape[-1])


def l1_logsigmoid_cos_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """DistilHuBERT: per frame, L1 (mean over dims) - log sigmoid(cos); mean over what ``mask`` keeps."""
    s, t = student.float(), teacher.float()
    per_item = (s - t).abs().mean(-1) - F.logsigmoid(F.cosine_similarity(s, t, dim=-1, eps=1e-6))
    return _masked_mean(per_item, mask)


def bce_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BCE(student logits, sigmoid(teacher logits)), mean over classes, then over what ``mask`` keeps."""
    probs = torch.sigmoid(teacher.float())
    per_item = F.binary_cross_entropy_with_logits(student.float(), probs, reduction="none").mean(-1)
    return _masked_mean(per_item, mask)


def cos_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - cos(student, teacher), mean over what ``mask`` keeps."""
    per_item = 1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1, eps=1e-6)
    return _masked_mean(per_item, mask)


def _same_width(teacher_dim: int) -> int:
    return teacher_dim


@dataclasses.dataclass(frozen=True)
class LossKind:
    """A registered loss: the function, and the head width it needs for a teacher of a given width."""

    fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (student, teacher, mask) -> scalar
    head_dim: Callable[[int], int] = _same_width  # teacher width (after the frame-rate relation) -> head width


LOSSES: dict[str, LossKind] = {
    "l1": LossKind(l1_loss),
    "mse": LossKind(mse_loss),
    "l1_logsigmoid_cos": LossKind(l1_logsigmoid_cos_loss),
    "bce": LossKind(bce_loss),
    "cos": LossKind(cos_loss),
    "mvq": LossKind(mvq_cross_entropy, head_dim=mvq_head_dim),
}


@dataclasses.dataclass(frozen=True)
class ResolvedTarget:
    """A KD target checked against the stores: its head as built and how its teacher frames are regrouped."""

    target: KDTarget
    head: HeadConfig  # the student head serving it
    per_frame: bool  # a frames teacher (True) or a clip teacher (False)
    group: int = 1  # teacher frames per student frame (teacher rate / 25 Hz)
    layer: tuple[int, int, int] | None = None  # (position, layers, frames per row) of a one-layer read, else None

    @property
    def name(self) -> str:
        return self.target.name


def frames_per_student_frame(frame_rate: float, target: KDTarget) -> int:
    """How many teacher frames make one 25 Hz student frame; a ConfigError unless a whole number >= 1."""
    ratio = frame_rate / STUDENT_FRAME_RATE
    if ratio < 1 or abs(ratio - round(ratio)) > 1e-6:
        raise ConfigError(f"target {target.name!r}: teacher {target.teacher!r} frames must come at a whole "
                          f"multiple of the student's {STUDENT_FRAME_RATE:g} Hz to stack or average. "
                          f"Got {frame_rate:g} Hz.")
    return int(round(ratio))


def resolve_targets(targets: Sequence[KDTarget], specs: Mapping[str, Any],
                    fallback_dims: Mapping[str, int] | None = None) -> list[ResolvedTarget]:
    """Each target with its head sized from the store spec of its teacher.

    A teacher the stores lack is an error, unless ``fallback_dims`` gives
    its target a width (the paper's default targets keep the preset's head
    size, and their term stays 0, with a warning).
    """
    resolved = []
    for target in targets:
        if target.head not in HEADS:
            raise ConfigError(f"target {target.name!r}: head must be one of {sorted(HEADS)}. Got {target.head!r}.")
        if target.loss not in LOSSES:
            raise ConfigError(f"target {target.name!r}: loss must be one of {sorted(LOSSES)}. Got {target.loss!r}.")
        per_frame = HEADS[target.head].per_frame
        spec = specs.get(target.teacher)
        if spec is None:
            if fallback_dims is None or target.name not in fallback_dims:
                raise ConfigError(f"target {target.name!r}: teacher must be one of the stores' teachers "
                                  f"{sorted(specs)}. Got {target.teacher!r}.")
            log.warning("the stores hold no teacher %r: its KD term stays 0", target.teacher)
            head = HeadConfig(target.name, target.head, fallback_dims[target.name], target.block)
            resolved.append(ResolvedTarget(target, head, per_frame))
            continue
        want = "frames" if per_frame else "clip"
        if spec.kind != want:
            raise ConfigError(f"target {target.name!r}: a {target.head!r} head needs a {want!r} teacher. Got "
                              f"teacher {target.teacher!r} of kind {spec.kind!r}.")
        group = frames_per_student_frame(spec.frame_rate, target) if per_frame else 1
        layer = _layer_of(target, spec)
        dim = spec.dim if layer is None else spec.dim // layer[1]
        width = dim * group if target.frame_rate == "stack" else dim
        head = HeadConfig(target.name, target.head, LOSSES[target.loss].head_dim(width), target.block)
        resolved.append(ResolvedTarget(target, head, per_frame, group, layer))
    return resolved


def _layer_of(target: KDTarget, spec: Any) -> tuple[int, int, int] | None:
    """Where ``target.layer`` sits in a stored frame of a teacher with a layer axis (spec config ``resolved_layers``)."""
    if target.layer is None:
        return None
    layers = list(spec.config.get("resolved_layers") or [])
    if spec.kind != "frames" or len(layers) < 2:
        raise ConfigError(f"target {target.name!r}: layer needs a frames teacher with several layers (extracted "
                          f"with layers=...). Got teacher {target.teacher!r} with layers {layers or 'not recorded'}.")
    if target.layer not in layers:
        raise ConfigError(f"target {target.name!r}: layer must be one of teacher {target.teacher!r}'s layers "
                          f"{layers}. Got {target.layer}.")
    return layers.index(target.layer), len(layers), int(spec.config.get("frames_per_row", 1))


def one_layer(values: torch.Tensor, layer: tuple[int, int, int]) -> torch.Tensor:
    """One layer's part of frames ``[B, T, rows x layers x D]`` (rows 50 Hz sub-frames per frame): ``[B, T, rows x D]``.

    Examples
    --------
    >>> one_layer(torch.arange(8.0).view(1, 1, 8), (1, 2, 2)).tolist()  # rows (0,1 | 2,3) and (4,5 | 6,7)
    [[[2.0, 3.0, 6.0, 7.0]]]
    """
    position, num_layers, rows = layer
    b, t, dim = values.shape
    return values.view(b, t, rows, num_layers, dim // (rows * num_layers))[:, :, :, position].reshape(b, t, -1)


def to_student_rate(values: torch.Tensor, lengths: torch.Tensor, group: int, mode: str
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher frames ``[B, T, D]`` at ``group`` x 25 Hz as 25 Hz frames: ``group`` frames stacked or averaged.

    A trailing part of fewer than ``group`` frames is dropped (as the whisper
    teacher's own stacking does).

    Examples
    --------
    >>> v, n = to_student_rate(torch.arange(6.0).view(1, 3, 2), torch.tensor([3]), 2, "stack")
    >>> v.tolist(), n.tolist()
    ([[[0.0, 1.0, 2.0, 3.0]]], [1])
    """
    if group == 1:
        return values, lengths
    b, t, d = values.shape
    t = t // group
    grouped = values[:, : t * group].reshape(b, t, group, d)
    out = grouped.reshape(b, t, group * d) if mode == "stack" else grouped.float().mean(2).to(values.dtype)
    return out, lengths // group


def _zero(like: torch.Tensor) -> torch.Tensor:
    return like.sum() * 0.0


def target_loss(out: StudentOutput, target: ResolvedTarget, batch: dict[str, torch.Tensor] | None) -> torch.Tensor:
    """One target's term on a batch (0 when no cut of the batch has the target)."""
    return target_loss_and_count(out, target, batch)[0]


def target_loss_and_count(out: StudentOutput, target: ResolvedTarget, batch: dict[str, torch.Tensor] | None
                          ) -> tuple[torch.Tensor, int]:
    """One target's term and how many items it averages (valid aligned frames, or cuts with the target)."""
    student = out.outputs[target.name]
    fn = LOSSES[target.target.loss].fn
    if not target.per_frame:
        if batch is None or not bool(batch["present"].any()):
            return _zero(student), 0
        present = batch["present"].to(student.device)
        return fn(student, batch["values"].to(student.device), present), int(present.sum())
    if batch is None:
        return _zero(student), 0
    lengths = batch["lengths"] * batch["present"].to(batch["lengths"].dtype)
    values = batch["values"] if target.layer is None else one_layer(batch["values"], target.layer)
    values, lengths = to_student_rate(values, lengths, target.group, target.target.frame_rate)
    s, t, mask = align_frames(student, out.num_frames, values.to(student.device), lengths)
    count = int(mask.sum())
    if count == 0:
        return _zero(student), 0
    return fn(s, t, mask), count


def kd_losses(out: StudentOutput, targets: dict[str, dict[str, torch.Tensor]],
              resolved: Sequence[ResolvedTarget]) -> dict[str, torch.Tensor]:
    """Each target's term by name, and their weighted sum under ``"total"``.

    ``targets`` maps a store teacher name to ``{"values", "present"}`` (and
    ``"lengths"`` for frames), as the loader builds it.

    Examples
    --------
    >>> losses = kd_losses(model(fbank, num_frames), batch["targets"], resolved)  # doctest: +SKIP
    >>> losses["total"].backward()  # doctest: +SKIP
    """
    terms = {t.name: target_loss(out, t, targets.get(t.target.teacher)) for t in resolved}
    total: torch.Tensor | None = None
    for t in resolved:  # left to right, as a written-out weighted sum adds
        weighted = t.target.weight * terms[t.name]
        total = weighted if total is None else total + weighted
    terms["total"] = total if total is not None else torch.zeros(())
    return terms
