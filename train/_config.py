"""Frozen configuration of the student model and of a stage-1 training run.

Both travel inside every checkpoint (``to_dict``), and a config file (YAML or
JSON) only ever serialises :class:`TrainConfig`; CLI flags map one-to-one onto
its fields.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from mt2kd._typed import file_values, from_dict
from mt2kd.errors import ConfigError
from mt2kd.train._targets import KDTarget, checked_targets, paper_targets
from mt2kd.train._zipformer_config import ZIPFORMER_PRESETS, ZipformerConfig


def _plain(value: Any) -> Any:
    """A config value as JSON/YAML holds it: tuples as lists, nested dataclasses as dicts."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    return value


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """One student head as built: what a checkpoint needs to rebuild it (sizes resolved from the store).

    Examples
    --------
    >>> HeadConfig("ecapa", "attentive", 192, block=3).block
    3
    """

    name: str  # the KD target (and log term) this head serves
    kind: str  # head kind, a key of mt2kd.train._heads.HEADS ("frames", "mean", "attentive")
    dim: int  # output width (from the teacher's spec, the frame-rate relation and the loss)
    block: int = -1  # 1-based entry of hidden_states it reads (Conformer block, Zipformer stack); -1 the last

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadConfig:
        return from_dict(cls, data)


@dataclasses.dataclass(frozen=True)
class StudentConfig:
    """Which encoder the student is, its sizes and its three heads.

    The Conformer reads the fields from ``frontend_channels`` to ``dropout``;
    a Zipformer (``encoder="zipformer"``) reads ``zipformer`` instead, and its
    ``model_dim`` is that encoder's output width. ``sv_block`` counts
    Conformer blocks or Zipformer stacks.

    Examples
    --------
    >>> StudentConfig.preset("tiny").model_dim
    32
    """

    input_dim: int = 80  # fbank bins fed to the front-end
    frontend_channels: int = 64  # channels of the two stride-2 conv layers (4x subsampling)
    model_dim: int = 512  # encoder width D
    num_blocks: int = 10  # Conformer blocks; every block's output is returned
    num_heads: int = 8  # self-attention heads
    ffn_dim: int = 2048  # hidden size of each of the two macaron feed-forward modules
    conv_kernel: int = 31  # depthwise convolution kernel (frames at 25 Hz)
    dropout: float = 0.1  # dropout inside blocks (train mode only)
    teacher_frame_dim: int = 2560  # M_ASR output: stacked whisper-large frames
    num_classes: int = 527  # M_AT output: AudioSet classes
    embedding_dim: int = 192  # M_SV output: ECAPA embedding size
    sv_block: int = 3  # 1-based block (Conformer) or stack (Zipformer) whose output feeds M_SV
    sv_attention_dim: int = 128  # hidden size of every attentive statistics pooling head
    encoder: str = "conformer"  # "conformer" (the fields above) or "zipformer" (the field below)
    zipformer: ZipformerConfig | None = None  # the Zipformer's sizes; set exactly when encoder == "zipformer"
    heads: tuple[HeadConfig, ...] = ()  # one per KD target; empty: the paper's three, sized by the fields above

    @property
    def num_outputs(self) -> int:
        """How many entries ``StudentOutput.hidden_states`` has: blocks, or Zipformer stacks."""
        return self.zipformer.num_stacks if self.zipformer is not None else self.num_blocks

    def __post_init__(self) -> None:
        self._check_encoder()
        if not 1 <= self.sv_block <= self.num_outputs:
            raise ConfigError(f"sv_block must be in [1, {self.num_outputs}] (the {self.encoder}'s "
                              f"{'stacks' if self.zipformer else 'blocks'}). Got {self.sv_block}.")
        heads = tuple(HeadConfig.from_dict(h) if isinstance(h, dict) else h for h in self.heads)
        object.__setattr__(self, "heads", heads)  # frozen: a checkpoint's dicts become HeadConfig once
        if self.model_dim % self.num_heads:
            raise ConfigError(
                f"model_dim must be divisible by num_heads={self.num_heads}. Got {self.model_dim}."
            )
        if self.conv_kernel % 2 == 0:
            raise ConfigError(f"conv_kernel must be odd (symmetric padding). Got {self.conv_kernel}.")

    def _check_encoder(self) -> None:
        if self.encoder not in ("conformer", "zipformer"):
            raise ConfigError(f"encoder must be one of ['conformer', 'zipformer']. Got {self.encoder!r}.")
        if (self.encoder == "zipformer") != (self.zipformer is not None):
            raise ConfigError(f"zipformer sizes must be given exactly when encoder is 'zipformer'. Got encoder "
                              f"{self.encoder!r} with zipformer {'set' if self.zipformer else 'None'}.")
        if self.zipformer is not None and self.model_dim != self.zipformer.output_dim:
            raise ConfigError(f"model_dim must be the Zipformer's output width {self.zipformer.output_dim}. "
                              f"Got {self.model_dim}.")

    @classmethod
    def preset(cls, name: str) -> StudentConfig:
        """A :data:`STUDENT_PRESETS` name: ``paper``/``tiny`` (Conformer), ``zipformer-m``/``zipformer-tiny``."""
        if name not in STUDENT_PRESETS:
            raise ConfigError(f"student preset must be one of {sorted(STUDENT_PRESETS)}. Got {name!r}.")
        return STUDENT_PRESETS[name]

    def resolved_heads(self) -> tuple[HeadConfig, ...]:
        """The heads this student carries: ``heads``, or M_ASR, M_AT and M_SV when it is empty."""
        if self.heads:
            return self.heads
        return (HeadConfig("whisper", "frames", self.teacher_frame_dim),
                HeadConfig("beats", "mean", self.num_classes),
                HeadConfig("ecapa", "attentive", self.embedding_dim, block=self.sv_block))

    def head_width(self, kind: str) -> int | None:
        """Output width of the first head of ``kind`` (``frames``: M_ASR, ``mean``: M_AT), None if it has none."""
        return next((h.dim for h in self.resolved_heads() if h.kind == kind), None)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if self.heads:
            data["heads"] = _plain(self.heads)
        else:  # the paper's heads: the very dict of checkpoints written before heads were configurable
            del data["heads"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudentConfig:
        if isinstance(data.get("zipformer"), dict):
            data = {**data, "zipformer": ZipformerConfig.from_dict(data["zipformer"])}
        return from_dict(cls, data)


def checkpoint_path(exp_dir: str | Path, step: int) -> Path:
    """Where the checkpoint of ``step`` is written (kept here, torch-free, so configs can name it ahead).

    Examples
    --------
    >>> checkpoint_path("exp", 30).name
    'checkpoint-00000030.pt'
    """
    return Path(exp_dir) / f"checkpoint-{step:08d}.pt"


STUDENT_PRESETS: dict[str, StudentConfig] = {
    "tiny": StudentConfig(
        frontend_channels=8, model_dim=32, num_blocks=4, num_heads=2, ffn_dim=64,
        conv_kernel=7, dropout=0.0, sv_attention_dim=16,
    ),
    "paper": StudentConfig(),
    "zipformer-m": StudentConfig(encoder="zipformer", zipformer=ZIPFORMER_PRESETS["m"],
                                 model_dim=ZIPFORMER_PRESETS["m"].output_dim),
    "zipformer-tiny": StudentConfig(encoder="zipformer", zipformer=ZIPFORMER_PRESETS["tiny"],
                                    model_dim=ZIPFORMER_PRESETS["tiny"].output_dim, sv_attention_dim=16),
}


# the flags that shape the paper's default targets (and only those)
_SHORTCUTS = ("whisper_weight", "beats_weight", "ecapa_weight", "frames_teacher", "tagging_teacher", "speaker_teacher")
# old field name -> the role name train and eval share (configs and checkpoints written before the rename)
ROLE_ALIASES = {"whisper_teacher": "frames_teacher", "beats_teacher": "tagging_teacher",
                "ecapa_teacher": "speaker_teacher"}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One stage-1 KD run. Every field is a ``mt2kd train kd`` flag of the same name.

    Examples
    --------
    >>> cfg = TrainConfig(cuts=("a.jsonl.gz",), stores=("s.zarr",), exp_dir="exp")
    >>> TrainConfig.from_dict(cfg.to_dict()) == cfg
    True
    """

    cuts: tuple[str, ...] = ()  # CutSet manifests, one per corpus, muxed by size
    stores: tuple[str, ...] = ()  # teacher stores, opened as one view
    exp_dir: str = "exp"  # checkpoints, TensorBoard logs and the resolved config go here
    repeats: tuple[int, ...] = ()  # per-corpus repeat count (empty: 1 for every corpus)
    student: str = "paper"  # StudentConfig preset: paper/tiny (Conformer), zipformer-m/zipformer-tiny
    max_duration: float = 1000.0  # s of audio per batch (per GPU)
    num_buckets: int = 30  # duration buckets of the DynamicBucketingSampler
    buffer_size: int = 10_000  # cuts held by the bucketing sampler
    shuffle: bool = True  # shuffle within buckets
    seed: int = 42  # model init, sampler, mux and dropout
    num_workers: int = 2  # DataLoader worker processes
    num_steps: int = 100_000  # optimiser steps in total
    lr: float = 2e-3  # peak learning rate of AdamW
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    warmup_steps: int = 1_000  # linear warm-up from 0 to lr
    lr_steps: float = 7_500.0  # Eden-like decay: lr ~ ((s^2 + S^2) / S^2)^-0.25
    grad_clip: float = 5.0  # max global gradient norm
    whisper_weight: float = 1.0  # lambda_1, L1 on whisper frames
    beats_weight: float = 1.0  # lambda_2, BCE on beats logits
    ecapa_weight: float = 1.0  # lambda_3, 1 - cos on ecapa embeddings
    # the store teacher of each role, named as evaluation names them (the old names whisper_teacher,
    # beats_teacher and ecapa_teacher are read too: ROLE_ALIASES)
    frames_teacher: str = "whisper"  # store teacher name of the frame targets (M_ASR)
    tagging_teacher: str = "beats"  # store teacher name of the AT logits (M_AT)
    speaker_teacher: str = "ecapa"  # store teacher name of the speaker embeddings (M_SV)
    targets: tuple[KDTarget, ...] = ()  # KD targets (docs/training.md); empty: the paper's three from the fields above
    checkpoint_every: int = 2_000  # steps between checkpoints
    keep_last: int = 5  # checkpoints kept on disk (older ones are deleted)
    log_every: int = 50  # steps between progress lines and TensorBoard scalars
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    device: str = "auto"  # "auto", "cpu" or "cuda"
    optimizer: str = "adamw"  # "adamw" (lr, weight_decay, grad_clip) or "scaled_adam" (ScaledAdam + Eden)
    scaled_adam_lr: float = 0.045  # ScaledAdam: Eden's base LR (the Zipformer paper's)
    lr_epochs: float = 3.5  # ScaledAdam: Eden's epoch decay, lr ~ ((e^2 + E^2) / E^2)^-0.25 (e: sampler epoch)
    clipping_scale: float = 2.0  # ScaledAdam: clip the scale-aware gradient norm at this x its recent median
    sv_block: int = 0  # block (Conformer) or stack (Zipformer) feeding M_SV, 1-based; 0: the preset's (3)

    def __post_init__(self) -> None:
        if self.repeats and len(self.repeats) != len(self.cuts):
            raise ConfigError(
                f"repeats must give one count per --cuts ({len(self.cuts)}). Got {list(self.repeats)}."
            )
        if any(r < 1 for r in self.repeats):
            raise ConfigError(f"every repeat count must be >= 1. Got {list(self.repeats)}.")
        if self.student not in STUDENT_PRESETS:
            raise ConfigError(f"student must be one of {sorted(STUDENT_PRESETS)}. Got {self.student!r}.")
        for name in ("max_duration", "lr", "num_steps", "checkpoint_every", "keep_last", "log_every",
                     "num_buckets", "buffer_size", "lr_steps"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0. Got {getattr(self, name)!r}.")
        if self.grad_clip <= 0:  # 0 would zero every gradient and a negative value flip its sign
            raise ConfigError(f"grad_clip must be > 0 (the max global gradient norm). Got {self.grad_clip!r}.")
        for name in ("weight_decay", "warmup_steps", "num_workers", "whisper_weight", "beats_weight",
                     "ecapa_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0. Got {getattr(self, name)!r}.")
        if self.optimizer not in ("adamw", "scaled_adam"):
            raise ConfigError(f"optimizer must be one of ['adamw', 'scaled_adam']. Got {self.optimizer!r}.")
        for name in ("scaled_adam_lr", "lr_epochs", "clipping_scale"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0. Got {getattr(self, name)!r}.")
        if self.sv_block < 0:
            raise ConfigError(f"sv_block must be >= 0 (0: the preset's). Got {self.sv_block}.")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be one of ['auto', 'cpu', 'cuda']. Got {self.device!r}.")
        targets = tuple(KDTarget.from_dict(t, f"targets[{i}]: ") if isinstance(t, dict) else t
                        for i, t in enumerate(self.targets))
        object.__setattr__(self, "targets", checked_targets(targets))  # frozen: dicts from a file become KDTarget
        shortcuts = [f.name for f in dataclasses.fields(self) if f.name in _SHORTCUTS
                     and getattr(self, f.name) != f.default]
        if self.targets and shortcuts:
            raise ConfigError(f"{shortcuts} set the paper's default targets only: with a targets list, give each "
                              f"target its own teacher and weight. Got both.")

    def kd_targets(self, sv_block: int) -> tuple[KDTarget, ...]:
        """``targets``, or the paper's three from the shortcut fields (ecapa reading ``sv_block``)."""
        if self.targets:
            return self.targets
        return paper_targets((self.frames_teacher, self.whisper_weight), (self.tagging_teacher, self.beats_weight),
                             (self.speaker_teacher, self.ecapa_weight), sv_block)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = _plain(dataclasses.asdict(self))
        if not self.targets:  # the paper's targets: the dict of configs written before targets were configurable
            del data["targets"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """The config of ``data``; a teacher role under its old name (``whisper_teacher``) is read as its new one."""
        return from_dict(cls, {ROLE_ALIASES.get(k, k): v for k, v in data.items()})

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        """Read a YAML (``.yaml``/``.yml``) or JSON config file."""
        return cls.from_dict(file_values(cls, path))
