"""The stage-1 KD training loop: optimiser, schedule, checkpoints, exact resume, DDP.

Resume is automatic: if ``exp_dir`` holds checkpoints, the latest one restores
model, optimiser, scheduler, sampler position, RNG states and step, and the
run continues as if it had never stopped.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from mt2kd.errors import ConfigError
from mt2kd.train._config import StudentConfig, TrainConfig
from mt2kd.train._data import LazyStores
from mt2kd.train._loader import check_manifests, check_target_coverage, make_loader, make_sampler, open_corpora_counted
from mt2kd.train._losses import LossWeights, kd_losses
from mt2kd.train._model import Student
from mt2kd.train._runner import Runner, eden_factor, start, to_device

__all__ = ["Trainer", "eden_factor", "student_config_for", "train"]

log = logging.getLogger(__name__)


def student_config_for(cfg: TrainConfig) -> StudentConfig:
    """The preset, with head sizes taken from the store's specs (whisper-medium frames are 2048-D, not 2560).

    A teacher the store lacks keeps the preset's size; its loss is then 0.
    """
    specs = LazyStores(cfg.stores).get().specs
    sizes = {}
    for field, teacher, kind in (("teacher_frame_dim", cfg.whisper_teacher, "frames"),
                                 ("num_classes", cfg.beats_teacher, "clip"),
                                 ("embedding_dim", cfg.ecapa_teacher, "clip")):
        spec = specs.get(teacher)
        if spec is None:
            log.warning("the stores hold no teacher %r: its KD term stays 0", teacher)
            continue
        if spec.kind != kind:
            raise ConfigError(f"teacher {teacher!r} must be a {kind!r} teacher for {field}. Got {spec.kind!r}.")
        sizes[field] = spec.dim
    return dataclasses.replace(StudentConfig.preset(cfg.student), **sizes)


def _warn_random_teachers(store: Any, rank: int) -> None:
    """Say up front that targets from random-weight teachers (store attrs ``random_teachers``) teach nothing real."""
    stores = getattr(store, "stores", None) or [store]
    random = [str(s.url) for s in stores if s.attrs.get("random_teachers") is True]
    if random and rank == 0:
        log.warning("random teacher weights in %s: their targets are for tests and demos, not real labels, "
                    "and a student trained on them learns nothing real", ", ".join(random))


class Trainer(Runner):
    """Everything one stage-1 run holds. Use :func:`train`; this class keeps the loop readable."""

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__(cfg)
        check_manifests(cfg.cuts)  # a missing manifest is named before the stores are read
        self.student_config = student_config_for(cfg)
        store = LazyStores(cfg.stores).get()
        check_target_coverage(cfg.cuts, store)
        _warn_random_teachers(store, self.rank)
        torch.manual_seed(cfg.seed)
        self.model = Student(self.student_config).to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = self.make_scheduler([lambda s: eden_factor(s, cfg.warmup_steps, cfg.lr_steps)])
        corpora, num_cuts = open_corpora_counted(cfg.cuts, cfg.repeats, seed=cfg.seed)
        self.sampler = make_sampler(
            corpora, cfg.max_duration, shuffle=cfg.shuffle, num_buckets=cfg.num_buckets,
            buffer_size=cfg.buffer_size, seed=cfg.seed, world_size=self.world_size, rank=self.rank,
            num_cuts=num_cuts,
        )
        self.weights = LossWeights(
            cfg.whisper_weight, cfg.beats_weight, cfg.ecapa_weight,
            cfg.whisper_teacher, cfg.beats_teacher, cfg.ecapa_teacher,
        )
        self.ddp_model = self.wrap_ddp()

    def make_loader(self) -> Any:
        teachers = [self.weights.whisper_teacher, self.weights.beats_teacher, self.weights.ecapa_teacher]
        return make_loader(self.sampler, self.cfg.stores, self.cfg.num_workers, teachers)

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        batch = to_device(batch, self.device)
        self.ddp_model.train()
        use_bf16 = self.cfg.bf16 and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = self.ddp_model(batch["fbank"], batch["num_frames"])
        losses = kd_losses(out, batch["targets"], self.weights)
        step_values = self.optimiser_step(losses["total"])
        values = {k: float(v.detach()) for k, v in losses.items()}
        return {**values, **step_values}


def train(cfg: TrainConfig) -> list[dict[str, float]]:
    """Run (or resume) stage-1 KD training.

    Returns the per-step loss values of this call (``whisper``, ``beats``,
    ``ecapa``, ``total``, ``grad_norm``, ``lr``).

    Examples
    --------
    >>> cfg = TrainConfig(cuts=("train.jsonl.gz",), stores=("teachers.zarr",), exp_dir="exp", student="tiny")
    >>> history = train(cfg)  # doctest: +SKIP
    """
    return start(Trainer(cfg), "train_config.json")
