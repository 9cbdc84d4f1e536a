"""The stage-2 model: the student with its KD heads, plus the ASR heads and the speaker layer.

Which parameters train when (the schedule of docs/finetuning.md):

- the *encoder* (front-end and every block; the Zipformer's embed and
  stacks) is frozen for the first ``freeze_encoder_steps``, then trains at
  ``encoder_lr_scale`` of the base LR;
- with ``freeze_sv`` the *speaker branch* (front-end, the blocks up to the
  block M_SV reads, and M_SV: the student's first ``attentive`` head) stays
  frozen throughout;
- the heads (the student's KD heads M_ASR, M_AT, M_SV, the ASR heads, the
  speaker layer) train from step 0 at the base LR.

A frozen parameter has ``requires_grad`` False, so it gets no gradient, no
optimiser update and no weight decay: it stays bitwise what it was.

The supervised losses on the student's own heads:

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

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from mt2kd.errors import CheckpointError
from mt2kd.train._asr import AsrConfig, AsrHeads
from mt2kd.train._checkpoint import checkpoint_kind, read_checkpoint, student_weights
from mt2kd.train._config import HeadConfig, StudentConfig
from mt2kd.train._heads import head_block
from mt2kd.train._model import Student, StudentOutput
from mt2kd.train._tokenizer import Tokenizer

HEAD_MODULES = ("heads",)  # Student submodules that are heads, not encoder (one head per KD target)


def first_head(student_config: StudentConfig, kind: str) -> HeadConfig:
    """The student's first head of ``kind`` ("mean": M_AT, "attentive": M_SV), as ``StudentOutput`` reads it."""
    for head in student_config.resolved_heads():
        if head.kind == kind:
            return head
    raise CheckpointError(f"the student must have a {kind!r} head to fine-tune. Got heads "
                          f"{[h.name for h in student_config.resolved_heads()]}.")


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


class FinetuneModel(nn.Module):
    """Student + optional ASR heads + optional speaker layer; ``forward`` returns the output and task losses.

    ``labels`` (all optional): ``"tokens"`` (one token-ID list per cut, None
    where the cut has no transcript), ``"events"`` ``[B, C]`` multi-hot with
    ``"events_present"`` ``[B]``, ``"speakers"`` ``[B]`` (class index, -1 where
    none).
    """

    def __init__(self, student: Student, asr: AsrHeads | None = None,
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
        if not rows:  # the names the heads would give, each 0: every step logs the same losses
            cfg = self.asr.config
            names = [n for n, on in (("transducer", cfg.use_transducer), ("ctc", cfg.use_ctc)) if on] + ["asr"]
            return {name: zero_of(self.asr, encoder_out) for name in names}
        index = torch.tensor(rows, device=encoder_out.device)
        kept = [t for t in tokens if t]  # the rows above, in order
        losses = self.asr.loss(encoder_out[index], out.num_frames[index], kept)
        return {name: value + zero_of(self.asr, encoder_out) for name, value in losses.items()}


def build_model(student_config: StudentConfig, asr_config: AsrConfig | None, num_speakers: int,
                cfg: Any) -> FinetuneModel:
    """The stage-2 model for these sizes, random weights (``cfg``: a FinetuneConfig, for the speaker loss)."""
    student = Student(student_config)
    asr = AsrHeads(asr_config, student_config.model_dim) if asr_config is not None else None
    embedding_dim = first_head(student_config, "attentive").dim
    speaker = (SpeakerClassifier(embedding_dim, num_speakers, cfg.speaker_loss, cfg.aam_margin, cfg.aam_scale)
               if num_speakers else None)
    return FinetuneModel(student, asr, speaker)


@dataclasses.dataclass
class Finetuned:
    """A student loaded for use: the model (eval mode, CPU) and what its checkpoint carries."""

    model: FinetuneModel  # student (+ ASR heads and speaker layer when fine-tuned)
    student_config: StudentConfig
    tokenizer: Tokenizer | None  # None: no ASR heads (a stage-1 checkpoint, or fine-tuned without transcripts)
    speakers: list[str]  # classes of the speaker layer
    label_file: str  # the label list the run named events with ("" : indices)
    kind: str  # "kd" or "finetune"
    step: int  # the training step it was saved at


def load_finetuned(path: str | Path) -> Finetuned:
    """A fine-tuned checkpoint (or a stage-1 one: student only) as a model ready to evaluate.

    Examples
    --------
    >>> student = load_finetuned("exp-ft/avg.pt")  # doctest: +SKIP
    >>> student.tokenizer.vocab_size, len(student.speakers)  # doctest: +SKIP
    (500, 1211)
    """
    from mt2kd.train._finetune_config import FinetuneConfig

    data = read_checkpoint(path)
    student_config = StudentConfig.from_dict(data["student_config"])
    kind = checkpoint_kind(data)
    tokenizer = Tokenizer.from_bytes(data["tokenizer"]) if data.get("tokenizer") else None
    asr = AsrConfig.from_dict(data["asr_config"]) if data.get("asr_config") else None
    speakers = list(data.get("speakers") or [])
    cfg = FinetuneConfig.from_dict(data["train_config"]) if kind == "finetune" else FinetuneConfig()
    model = build_model(student_config, asr, len(speakers), cfg)
    try:
        if kind == "finetune":
            model.load_state_dict(data["model"])
        else:
            model.student.load_state_dict(student_weights(data))
    except RuntimeError as e:
        raise CheckpointError(f"weights in {str(path)!r} must match its configs. Got: {e}") from e
    return Finetuned(model.eval(), student_config, tokenizer, speakers, str(data.get("label_file") or ""), kind,
                     int(data.get("step", 0)))


def encoder_modules(student: Student) -> list[nn.Module]:
    """The student's encoder: everything but its heads."""
    return [module for name, module in student.named_children() if name not in HEAD_MODULES]


def sv_branch_modules(student: Student) -> list[nn.Module]:
    """What ``freeze_sv`` freezes: the front-end, the blocks (or stacks) up to the one M_SV reads, and M_SV."""
    sv = first_head(student.config, "attentive")
    depth = head_block(sv, student.config.num_outputs) + 1
    if student.config.zipformer is not None:
        encoder = student.zipformer
        lower: list[nn.Module] = [encoder.embed, *encoder.stacks[:depth]]
    else:
        lower = [student.frontend, *student.blocks[:depth]]
    return [*lower, student.heads[sv.name]]


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


def set_trainable(model: FinetuneModel, train_encoder: bool, freeze_sv: bool, used_heads: set[str]) -> None:
    """``requires_grad`` of every parameter for this phase of the schedule.

    A student head no loss of the run reads (M_ASR when the whisper KD term
    is off) is frozen too: it would get no gradient, which DDP refuses.
    """
    encoder, heads, sv_branch = parameter_groups(model)
    for p in encoder:
        p.requires_grad_(train_encoder)
    for p in heads:
        p.requires_grad_(True)
    for name, head in model.student.heads.items():
        if name not in used_heads:
            head.requires_grad_(False)
    if freeze_sv:
        for p in sv_branch:
            p.requires_grad_(False)
