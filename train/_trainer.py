"""The stage-1 KD training loop: optimiser, schedule, checkpoints, exact resume, DDP.

Resume is automatic: if ``exp_dir`` holds checkpoints, the latest one restores
model, optimiser, scheduler, sampler position, RNG states and step, and the
run continues as if it had never stopped.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

import torch

from mt2kd.cuts import check_manifests
from mt2kd.train._config import HeadConfig, StudentConfig, TrainConfig
from mt2kd.train._data import LazyStores
from mt2kd.train._loader import check_target_coverage, make_loader, make_sampler, open_corpora_counted
from mt2kd.train._losses import ResolvedTarget, kd_losses, resolve_targets
from mt2kd.train._model import Student
from mt2kd.train._optim import base_lr, lr_factor, make_optimizer, max_grad_norm
from mt2kd.train._runner import Runner, eden_factor, start, to_device
from mt2kd.train._zipformer import set_training_step

__all__ = ["Trainer", "eden_factor", "student_config_for", "train"]

if TYPE_CHECKING:
    from mt2kd.store import ReadableStore

log = logging.getLogger(__name__)


def student_config_for(cfg: TrainConfig) -> StudentConfig:
    """The preset, with one head per KD target sized from the store's specs (whisper-medium frames are 2048-D).

    A teacher of the paper's default targets that the store lacks keeps the
    preset's size (its loss is then 0); a configured target's must exist.
    """
    return resolved_student(cfg)[0]


def resolved_student(cfg: TrainConfig) -> tuple[StudentConfig, list[ResolvedTarget]]:
    """The student config of this run and its KD targets checked against the stores."""
    preset = StudentConfig.preset(cfg.student)
    if cfg.sv_block:  # the block (Conformer) or stack (Zipformer) M_SV reads, when the run names one
        preset = dataclasses.replace(preset, sv_block=cfg.sv_block)
    specs = LazyStores(cfg.stores).get().specs
    fallback = None if cfg.targets else {"whisper": preset.teacher_frame_dim, "beats": preset.num_classes,
                                         "ecapa": preset.embedding_dim}
    resolved = resolve_targets(cfg.kd_targets(preset.sv_block), specs, fallback)
    for t in resolved:  # a block the student lacks is named with its target, before any model is built
        t.target.block_index(preset.num_outputs)
    return _with_heads(preset, tuple(t.head for t in resolved)), resolved


def _with_heads(preset: StudentConfig, heads: tuple[HeadConfig, ...]) -> StudentConfig:
    """``preset`` carrying ``heads``: in the fixed-head form (sizes in its fields) when they are the paper's three.

    So a default run writes the very student config (and parameter names)
    that it always did, and checkpoints stay interchangeable.
    """
    by_name = {h.name: h for h in heads}
    if set(by_name) == {"whisper", "beats", "ecapa"} and 1 <= by_name["ecapa"].block <= preset.num_outputs:
        legacy = dataclasses.replace(preset, teacher_frame_dim=by_name["whisper"].dim,
                                     num_classes=by_name["beats"].dim, embedding_dim=by_name["ecapa"].dim,
                                     sv_block=by_name["ecapa"].block)
        if legacy.resolved_heads() == heads:
            return legacy
    return dataclasses.replace(preset, heads=heads)


def _warn_random_teachers(store: ReadableStore, rank: int) -> None:
    """Say up front that targets from random-weight teachers (store attrs ``random_teachers``) teach nothing real."""
    random = store.random_teacher_urls()
    if random and rank == 0:
        log.warning("random teacher weights in %s: their targets are for tests and demos, not real labels, "
                    "and a student trained on them learns nothing real", ", ".join(random))


class Trainer(Runner):
    """Everything one stage-1 run holds. Use :func:`train`; this class keeps the loop readable."""

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__(cfg)
        check_manifests(cfg.cuts)  # a missing manifest is named before the stores are read
        self.student_config, self.targets = resolved_student(cfg)
        store = LazyStores(cfg.stores).get()
        check_target_coverage(cfg.cuts, store)
        _warn_random_teachers(store, self.rank)
        torch.manual_seed(cfg.seed)
        self.model = Student(self.student_config).to(self.device)
        corpora, num_cuts = open_corpora_counted(cfg.cuts, cfg.repeats, seed=cfg.seed)
        self.sampler = make_sampler(
            corpora, cfg.max_duration, shuffle=cfg.shuffle, num_buckets=cfg.num_buckets,
            buffer_size=cfg.buffer_size, seed=cfg.seed, world_size=self.world_size, rank=self.rank,
            num_cuts=num_cuts,
        )
        self.optimizer = make_optimizer(self.model.parameters(), cfg)
        # made once the sampler exists: Eden's epoch term reads the sampler's epoch
        self.scheduler = self.make_scheduler([lambda s: lr_factor(cfg, s, self.sampler.epoch)])
        self.ddp_model = self.wrap_ddp()

    def base_lrs(self) -> list[float]:
        return [base_lr(self.cfg)] * len(self.optimizer.param_groups)

    def max_grad_norm(self) -> float:
        return max_grad_norm(self.cfg)

    def resume(self) -> bool:
        resumed = super().resume()
        if resumed:  # again, now that the sampler is back at its saved epoch (Eden decays in epochs too)
            self._apply_optimiser_settings()
        return resumed

    def make_loader(self) -> Any:
        teachers = list(dict.fromkeys(t.target.teacher for t in self.targets))
        return make_loader(self.sampler, self.cfg.stores, self.cfg.num_workers, teachers)

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        batch = to_device(batch, self.device)
        self.ddp_model.train()
        set_training_step(self.model, self.step)  # the Zipformer's scheduled rates
        use_bf16 = self.cfg.bf16 and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = self.ddp_model(batch["fbank"], batch["num_frames"])
        losses = kd_losses(out, batch["targets"], self.targets)
        step_values = self.optimiser_step(losses["total"])
        values = {k: float(v.detach()) for k, v in losses.items()}
        return {**values, **step_values}


def train(cfg: TrainConfig) -> list[dict[str, float]]:
    """Run (or resume) stage-1 KD training.

    Returns the per-step loss values of this call (one per KD target by its
    name, ``whisper``, ``beats`` and ``ecapa`` by default; ``total``,
    ``grad_norm``, ``lr``).

    Examples
    --------
    >>> cfg = TrainConfig(cuts=("train.jsonl.gz",), stores=("teachers.zarr",), exp_dir="exp", student="tiny")
    >>> history = train(cfg)  # doctest: +SKIP
    """
    return start(Trainer(cfg), "train_config.json")
