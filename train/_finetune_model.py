"""The stage-2 model: the student with its KD heads, plus the ASR heads and the speaker layer.

Which parameters train when (the schedule of docs/finetuning.md):

- the *encoder* (front-end and every block; the Zipformer's embed and
  stacks) is frozen for the first ``freeze_encoder_steps``, then trains at
  ``encoder_lr_scale`` of the base LR;
- with ``freeze_sv`` the *speaker branch* (front-end, the blocks up to
  ``sv_block``, and M_SV) stays frozen throughout;
- the heads (M_ASR, M_AT, the ASR heads, the speaker layer) train from step 0
  at the base LR.

A frozen parameter has ``requires_grad`` False, so it gets no gradient, no
optimiser update and no weight decay: it stays bitwise what it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from mt2kd.train._model import Student, StudentOutput
from mt2kd.train._task_heads import SpeakerClassifier, tagging_loss, zero_of

HEAD_MODULES = ("asr_head", "at_head", "sv_pool", "sv_head")  # Student submodules that are heads, not encoder
SV_HEAD_MODULES = ("sv_pool", "sv_head")  # M_SV


class FinetuneModel(nn.Module):
    """Student + optional ASR heads + optional speaker layer; ``forward`` returns the output and task losses.

    ``labels`` (all optional): ``"tokens"`` (one token-ID list per cut, None
    where the cut has no transcript), ``"events"`` ``[B, C]`` multi-hot with
    ``"events_present"`` ``[B]``, ``"speakers"`` ``[B]`` (class index, -1 where
    none).
    """

    def __init__(self, student: Student, asr: nn.Module | None = None,
                 speaker: SpeakerClassifier | None = None) -> None:
        super().__init__()
        self.student = student
        self.asr = asr
        self.speaker = speaker

    def forward(self, fbank: torch.Tensor, num_frames: torch.Tensor,
                labels: dict[str, Any]) -> tuple[StudentOutput, dict[str, torch.Tensor]]:
        out = self.student(fbank, num_frames)
        losses: dict[str, torch.Tensor] = {}
        if self.asr is not None:
            losses.update(self._asr_losses(out, labels["tokens"]))
        if "events" in labels:
            losses["tagging"] = tagging_loss(out.at_logits, labels["events"], labels["events_present"])
        if self.speaker is not None:
            losses["speaker"] = self.speaker.loss(out.sv_embedding, labels["speakers"])
        return out, losses

    def _asr_losses(self, out: StudentOutput, tokens: list[list[int] | None]) -> dict[str, torch.Tensor]:
        """The ASR heads' named losses over the cuts with a transcript (0, tied to the heads, without any)."""
        assert self.asr is not None
        rows = [i for i, t in enumerate(tokens) if t]
        encoder_out = out.hidden_states[-1]
        if not rows:
            return {name: zero_of(self.asr, encoder_out) for name in self.asr.loss_names}
        index = torch.tensor(rows, device=encoder_out.device)
        kept = [tokens[i] for i in rows]
        losses = self.asr.loss(encoder_out[index], out.num_frames[index], kept)
        return {name: value + zero_of(self.asr, encoder_out) for name, value in losses.items()}


def _named_children(student: Student, names: tuple[str, ...]) -> Iterator[nn.Module]:
    for name in names:
        module = getattr(student, name, None)
        if module is not None:
            yield module


def encoder_modules(student: Student) -> list[nn.Module]:
    """The student's encoder: everything but its heads."""
    return [module for name, module in student.named_children() if name not in HEAD_MODULES]


def sv_branch_modules(student: Student) -> list[nn.Module]:
    """What ``freeze_sv`` freezes: the front-end, the blocks (or stacks) up to ``sv_block``, and M_SV."""
    depth = student.config.sv_block
    if student.config.zipformer is not None:
        encoder = student.zipformer
        lower: list[nn.Module] = [encoder.embed, *encoder.stacks[:depth]]
    else:
        lower = [student.frontend, *student.blocks[:depth]]
    return lower + list(_named_children(student, SV_HEAD_MODULES))


def parameters_of(modules: list[nn.Module]) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for module in modules:
        for p in module.parameters():
            seen.setdefault(id(p), p)
    return list(seen.values())


def parameter_groups(model: FinetuneModel) -> tuple[list[nn.Parameter], list[nn.Parameter], list[nn.Parameter]]:
    """(encoder, heads, speaker branch) parameters: the first two are the optimiser's groups, in that order.

    The speaker branch overlaps both (front-end and lower blocks are encoder,
    M_SV is a head); it is returned apart for freezing.
    """
    encoder = parameters_of(encoder_modules(model.student))
    encoder_ids = {id(p) for p in encoder}
    heads = [p for p in model.parameters() if id(p) not in encoder_ids]
    return encoder, heads, parameters_of(sv_branch_modules(model.student))


def set_trainable(model: FinetuneModel, train_encoder: bool, freeze_sv: bool) -> None:
    """``requires_grad`` of every parameter for this phase of the schedule."""
    encoder, heads, sv_branch = parameter_groups(model)
    for p in encoder:
        p.requires_grad_(train_encoder)
    for p in heads:
        p.requires_grad_(True)
    if freeze_sv:
        for p in sv_branch:
            p.requires_grad_(False)
