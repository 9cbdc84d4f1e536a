"""Frozen configuration of a stage-2 fine-tuning run (``mt2kd train finetune``).

Every field is a flag of the same name (``--freeze-encoder-steps`` for
``freeze_encoder_steps``); the list fields take one value per use: ``--cuts``,
``--store``, ``--repeat``. The defaults follow the MT2KD paper's best system
(its Table XI): the encoder frozen for the first 12,000 steps and trained at a
fifth of the base LR after that, the speaker branch frozen throughout, and
the tagging KD term kept as an auxiliary loss when a store is given.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from mt2kd._typed import file_values, from_dict, typed_values
from mt2kd.errors import ConfigError
from mt2kd.train._asr_config import AsrConfig
from mt2kd.train._config import STUDENT_PRESETS

SPEAKER_LOSSES = ("ce", "aam")
BATCH_MODES = ("mixed", "alternate")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """One stage-2 run. Each cut contributes the losses it has labels or targets for.

    Examples
    --------
    >>> cfg = FinetuneConfig(cuts=("train.jsonl.gz",), init="exp/avg.pt", exp_dir="exp-ft")
    >>> FinetuneConfig.from_dict(cfg.to_dict()) == cfg
    True
    """

    cuts: tuple[str, ...] = ()  # CutSet manifests, one per corpus, muxed by size
    stores: tuple[str, ...] = ()  # teacher stores for the KD auxiliary losses (empty: no KD terms)
    exp_dir: str = "exp-finetune"  # checkpoints, TensorBoard logs and the resolved config go here
    init: str = ""  # stage-1 checkpoint or averaged model to start from ("" trains from scratch)
    student: str = "paper"  # StudentConfig preset when training from scratch (--init brings its own)
    repeats: tuple[int, ...] = ()  # per-corpus repeat count (empty: 1 for every corpus)
    tokenizer: str = ""  # BPE model folder from `mt2kd train bpe` ("" : no ASR heads, no ASR losses)
    asr: AsrConfig = dataclasses.field(default_factory=AsrConfig)  # ASR heads (vocab_size: the tokenizer's)
    labels: str = ""  # label list naming event classes (one per line, or AudioSet's csv); "" : indices only
    asr_weight: float = 1.0  # weight of the ASR loss (asr.transducer_weight x transducer + asr.ctc_weight x CTC)
    tagging_weight: float = 1.0  # weight of the BCE between M_AT logits and the cut's event labels
    speaker_weight: float = 1.0  # weight of the speaker classification loss after M_SV
    speaker_loss: str = "ce"  # "ce" (softmax cross-entropy) or "aam" (additive angular margin softmax)
    aam_margin: float = 0.2  # AAM-softmax angular margin m (radians)
    aam_scale: float = 30.0  # AAM-softmax scale s
    speaker_crop: float = 0.0  # s; > 0 trains speaker-only cuts (no transcript) on a random crop this long
    whisper_weight: float = 0.0  # KD auxiliary: L1 on whisper frames (0: off)
    beats_weight: float = 1.0  # KD auxiliary: BCE on beats logits (the paper keeps this one)
    ecapa_weight: float = 0.0  # KD auxiliary: 1 - cos on ecapa embeddings (0: off)
    whisper_teacher: str = "whisper"  # store teacher name of the frame targets
    beats_teacher: str = "beats"  # store teacher name of the AT logits
    ecapa_teacher: str = "ecapa"  # store teacher name of the speaker embeddings
    freeze_encoder_steps: int = 12_000  # steps at the start during which only the heads train
    encoder_lr_scale: float = 0.2  # encoder LR as a fraction of lr once it trains (the paper: 1/5)
    freeze_sv: bool = True  # keep the front-end, the blocks up to sv_block and M_SV frozen throughout
    batches: str = "mixed"  # "mixed": corpora muxed in every batch; "alternate": one manifest per batch, in turn
    max_duration: float = 600.0  # s of audio per batch (per GPU); see docs/finetuning.md for memory
    num_buckets: int = 30  # duration buckets of the DynamicBucketingSampler
    buffer_size: int = 10_000  # cuts held by the bucketing sampler
    shuffle: bool = True  # shuffle within buckets
    seed: int = 42  # head init, sampler, mux, crops and dropout
    num_workers: int = 2  # DataLoader worker processes
    num_steps: int = 60_000  # optimiser steps in total (frozen steps included)
    lr: float = 1e-3  # peak learning rate of AdamW (the heads'; the encoder's is scaled)
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    warmup_steps: int = 1_000  # linear warm-up from 0 to lr
    lr_steps: float = 7_500.0  # Eden-like decay: lr ~ ((s^2 + S^2) / S^2)^-0.25
    grad_clip: float = 5.0  # max global gradient norm
    checkpoint_every: int = 2_000  # steps between checkpoints
    keep_last: int = 5  # checkpoints kept on disk (older ones are deleted)
    log_every: int = 50  # steps between progress lines and TensorBoard scalars
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    device: str = "auto"  # "auto", "cpu" or "cuda"

    def __post_init__(self) -> None:
        self._check_choices()
        self._check_ranges()
        if self.repeats and len(self.repeats) != len(self.cuts):
            raise ConfigError(
                f"repeats must give one count per --cuts ({len(self.cuts)}). Got {list(self.repeats)}.")
        if any(r < 1 for r in self.repeats):
            raise ConfigError(f"every repeat count must be >= 1. Got {list(self.repeats)}.")

    def _check_choices(self) -> None:
        choices = {"student": sorted(STUDENT_PRESETS), "speaker_loss": list(SPEAKER_LOSSES),
                   "batches": list(BATCH_MODES), "device": ["auto", "cpu", "cuda"]}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}. Got {getattr(self, name)!r}.")

    def _check_ranges(self) -> None:
        for name in ("max_duration", "lr", "num_steps", "checkpoint_every", "keep_last", "log_every",
                     "num_buckets", "buffer_size", "lr_steps", "grad_clip", "aam_scale"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0. Got {getattr(self, name)!r}.")
        for name in ("weight_decay", "warmup_steps", "num_workers", "asr_weight", "tagging_weight",
                     "speaker_weight", "whisper_weight", "beats_weight", "ecapa_weight", "freeze_encoder_steps",
                     "encoder_lr_scale", "speaker_crop", "aam_margin"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0. Got {getattr(self, name)!r}.")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinetuneConfig:
        asr = data.get("asr")
        if isinstance(asr, dict):
            data = {**data, "asr": AsrConfig.from_dict(typed_values(AsrConfig, asr, "asr."))}
        elif asr is not None and not isinstance(asr, AsrConfig):
            raise ConfigError(f"asr must be a mapping of AsrConfig fields. Got {asr!r}.")
        return from_dict(cls, data)

    @classmethod
    def from_file(cls, path: str | Path) -> FinetuneConfig:
        """Read a YAML (``.yaml``/``.yml``) or JSON config file."""
        return cls.from_dict(file_values(cls, path))
