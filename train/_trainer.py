"""The stage-1 KD training loop: optimiser, schedule, checkpoints, exact resume, DDP.

Resume is automatic: if ``exp_dir`` holds checkpoints, the latest one restores
model, optimiser, scheduler, sampler position, RNG states and step, and the
run continues as if it had never stopped.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from mt2kd.errors import CheckpointError, ConfigError
from mt2kd.train._checkpoint import capture_rng, list_checkpoints, read_checkpoint, restore_rng, save_checkpoint
from mt2kd.train._config import StudentConfig, TrainConfig
from mt2kd.train._data import LazyStores
from mt2kd.train._loader import (
    check_manifests,
    check_target_coverage,
    make_loader,
    make_sampler,
    open_corpora_counted,
    restore_sampler,
    sampler_state,
)
from mt2kd.train._losses import LossWeights, kd_losses
from mt2kd.train._model import Student
from mt2kd.train._progress import Progress

log = logging.getLogger(__name__)

MAX_DROP_WARNINGS = 5  # unreadable cuts warned about one by one; the rest are counted in the progress lines


def eden_factor(step: int, warmup_steps: int, lr_steps: float) -> float:
    """LR multiplier: linear warm-up to 1, then decay ``((s^2 + S^2) / S^2)^-1/4`` (Eden-like).

    Examples
    --------
    >>> round(eden_factor(0, 10, 100.0), 3), eden_factor(9, 10, 100.0) > 0.99
    (0.1, True)
    """
    warmup = min(1.0, (step + 1) / max(1, warmup_steps))
    decay = ((step**2 + lr_steps**2) / lr_steps**2) ** -0.25
    return warmup * decay


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


# StudentConfig fields a resumed model may change: they hold no weights
_SHAPE_FREE_FIELDS = ("dropout",)

# fields whose change invalidates the saved sampler position (the batches would be other batches)
_SAMPLER_FIELDS = ("cuts", "repeats", "max_duration", "num_buckets", "buffer_size", "shuffle", "seed")


def _changed_settings(saved: dict[str, Any], now: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Fields whose value differs between a checkpoint's train_config and this run's: name -> (old, new).

    Examples
    --------
    >>> _changed_settings({"lr": 0.003, "seed": 1}, {"lr": 0.0001, "seed": 1, "bf16": True})
    {'lr': (0.003, 0.0001)}
    """
    return {name: (saved[name], value) for name, value in now.items() if name in saved and saved[name] != value}


def _warn_random_teachers(store: Any, rank: int) -> None:
    """Say up front that targets from random-weight teachers (store attrs ``random_teachers``) teach nothing real."""
    stores = getattr(store, "stores", None) or [store]
    random = [str(s.url) for s in stores if s.attrs.get("random_teachers") is True]
    if random and rank == 0:
        log.warning("random teacher weights in %s: their targets are for tests and demos, not real labels, "
                    "and a student trained on them learns nothing real", ", ".join(random))


def _distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank), initialising the process group under torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1, 0
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world_size, int(os.environ.get("LOCAL_RANK", "0"))


def _device(cfg: TrainConfig, local_rank: int) -> torch.device:
    if cfg.device == "cuda" and local_rank >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        seen = f"{count} CUDA device(s)" if count else "no CUDA device"
        raise ConfigError(f"device 'cuda' must be a GPU this machine shows (local rank {local_rank}). Got {seen} "
                          f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}). "
                          f"Run on a GPU node, or pass --device cpu or auto.")
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    moved = dict(batch)
    moved["fbank"] = batch["fbank"].to(device, non_blocking=True)
    moved["num_frames"] = batch["num_frames"].to(device)
    moved["targets"] = {
        name: {k: v.to(device, non_blocking=True) for k, v in t.items()} for name, t in batch["targets"].items()
    }
    return moved


class Trainer:
    """Everything one run holds. Use :func:`train`; this class keeps the loop readable."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.rank, self.world_size, local_rank = _distributed()
        self.device = _device(cfg, local_rank)
        check_manifests(cfg.cuts)  # a missing manifest is named before the stores are read
        self.student_config = student_config_for(cfg)
        store = LazyStores(cfg.stores).get()
        check_target_coverage(cfg.cuts, store)
        _warn_random_teachers(store, self.rank)
        torch.manual_seed(cfg.seed)
        self.model = Student(self.student_config).to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: eden_factor(s, cfg.warmup_steps, cfg.lr_steps)
        )
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
        self.step = 0
        self.batches_in_epoch = 0  # batches consumed (trained on or skipped) in the sampler's current epoch
        self.num_cuts_dropped = 0  # cuts this call dropped because their audio could not be read
        self.ddp_model = self._wrap_ddp()

    def _wrap_ddp(self) -> torch.nn.Module:
        if self.world_size <= 1:
            return self.model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=ids)

    def state(self, rng: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "student_config": self.student_config.to_dict(),
            "train_config": self.cfg.to_dict(),
            "step": self.step,
            "batches_in_epoch": self.batches_in_epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": sampler_state(self.sampler, self.batches_in_epoch),
            "rng": rng,  # one entry per rank: each draws its own dropout masks
        }

    def resume(self) -> bool:
        """Load the latest checkpoint of ``exp_dir`` if there is one.

        Settings changed since the checkpoint take effect: the learning rate,
        weight decay and schedule from the resumed step on. The sampler's
        position holds only for the same corpora, batching, seed and number
        of ranks; if any of those changed, training goes on at the saved step
        with the sampler's next epoch from its start (logged as a warning:
        that resume is not exact).
        """
        found = list_checkpoints(self.cfg.exp_dir)
        if not found:
            return False
        data = read_checkpoint(found[-1])
        self._check_student(found[-1], data)
        try:
            self.model.load_state_dict(data["model"])
        except RuntimeError as e:
            raise CheckpointError(f"weights in {str(found[-1])!r} must fit this run's student. Got: {e}") from e
        self.optimizer.load_state_dict(data["optimizer"])
        self.scheduler.load_state_dict(data["scheduler"])
        self._apply_optimiser_settings()
        rng = data["rng"] if isinstance(data["rng"], list) else [data["rng"]]  # a dict: one rank's, older runs
        restore_rng(rng[self.rank % len(rng)])
        self.step, self.batches_in_epoch = int(data["step"]), int(data["batches_in_epoch"])
        changed = _changed_settings(data["train_config"], self.cfg.to_dict())
        moved = [name for name in changed if name in _SAMPLER_FIELDS]
        saved_ranks = int(data["sampler"]["world_size"])
        if saved_ranks != self.world_size:
            moved.append("ranks")
            changed["ranks"] = (saved_ranks, self.world_size)
        say = log.warning if self.rank == 0 else log.debug  # one rank tells: every rank resumes alike
        if moved:
            say(
                "resuming %s with changed %s: the sampler cannot resume mid-epoch with them, so training goes "
                "on at step %d with its epoch %d from the start (not an exact resume)", found[-1],
                ", ".join(f"{name} ({changed[name][0]!r} -> {changed[name][1]!r})" for name in moved),
                self.step, int(data["sampler"]["epoch"]) + 1,
            )
            self.sampler.set_epoch(int(data["sampler"]["epoch"]) + 1)
            self.batches_in_epoch = 0
        else:
            restore_sampler(self.sampler, data["sampler"])
        rest = [name for name in changed if name not in moved]
        tell = log.info if self.rank == 0 else log.debug
        if rest:
            tell("resuming with changed %s",
                 ", ".join(f"{name} ({changed[name][0]!r} -> {changed[name][1]!r})" for name in rest))
        tell("resumed from %s at step %d", found[-1], self.step)
        return True

    def _check_student(self, path: Path, data: dict[str, Any]) -> None:
        """Refuse to resume a checkpoint of a student of another shape (another preset or head sizes)."""
        saved = data.get("student_config") or {}
        now = self.student_config.to_dict()
        differ = {name: (saved.get(name), value) for name, value in now.items()
                  if name not in _SHAPE_FREE_FIELDS and saved.get(name) != value}
        if differ:
            preset = (data.get("train_config") or {}).get("student")
            if preset is not None and preset != self.cfg.student:  # the likely cause, in the user's own words
                differ = {"student": (preset, self.cfg.student), **differ}
            raise ConfigError(
                f"the student must have the shape of the one in {str(path)!r} to resume it. Got other "
                + ", ".join(f"{name} ({old!r} there, {new!r} now)" for name, (old, new) in differ.items())
                + f": train a new student in a new --exp-dir, or resume with the settings of {str(path)!r}."
            )

    def _apply_optimiser_settings(self) -> None:
        """This run's lr, weight decay and schedule on the restored optimiser (unchanged ones: same values)."""
        for group in self.optimizer.param_groups:
            group["weight_decay"] = self.cfg.weight_decay
            group["initial_lr"] = self.cfg.lr
        self.scheduler.base_lrs = [self.cfg.lr] * len(self.optimizer.param_groups)
        factor = eden_factor(self.scheduler.last_epoch, self.cfg.warmup_steps, self.cfg.lr_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.lr * factor  # LambdaLR's formula: the saved lr, bit for bit, if nothing changed

    def _rng_of_every_rank(self) -> list[dict[str, Any]]:
        """Each rank's RNG states, gathered on every rank (a collective: all ranks call it together)."""
        own = capture_rng()
        if self.world_size <= 1:
            return [own]
        import torch.distributed as dist

        # as torch.save bytes: all_gather_object's unpickler cannot rebuild tensors
        buffer = io.BytesIO()
        torch.save(own, buffer)
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, buffer.getvalue())
        return [torch.load(io.BytesIO(data), weights_only=True) for data in gathered]

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        self.ddp_model.train()
        use_bf16 = self.cfg.bf16 and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = self.ddp_model(batch["fbank"], batch["num_frames"])
        losses = kd_losses(out, batch["targets"], self.weights)
        self.optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        values = {k: float(v.detach()) for k, v in losses.items()}
        values["grad_norm"] = float(grad_norm)
        values["lr"] = float(self.scheduler.get_last_lr()[0])
        return values

    def run(self) -> list[dict[str, float]]:
        """Train until ``num_steps``; returns this call's per-step losses."""
        history: list[dict[str, float]] = []
        progress = Progress(self.cfg, self.rank, start_step=self.step)
        teachers = [self.weights.whisper_teacher, self.weights.beats_teacher, self.weights.ecapa_teacher]
        loader = make_loader(self.sampler, self.cfg.stores, self.cfg.num_workers, teachers)
        try:
            with progress.lines_above_bar():
                self._loop(loader, progress, history)
        finally:
            progress.close()
        return history

    def _loop(self, loader: Any, progress: Progress, history: list[dict[str, float]]) -> None:
        while self.step < self.cfg.num_steps:
            start_step, whole_epoch = self.step, self.batches_in_epoch == 0
            for batch in progress.timed(loader):
                self.batches_in_epoch += 1  # consumed from the sampler, trained on or not
                self._note_dropped(batch["dropped"], progress)
                if self._skip_empty(batch):
                    continue
                values = self.train_step(_to_device(batch, self.device))
                self.step += 1
                history.append(values)
                progress.record(self.step, values, batch["duration"])
                self._maybe_checkpoint()
                if self.step >= self.cfg.num_steps:
                    break
            else:  # the sampler ran dry: next epoch
                if self.step == start_step and whole_epoch:
                    self._refuse_empty_epoch()
                self.sampler.set_epoch(self.sampler.epoch + 1)
                self.batches_in_epoch = 0

    def _refuse_empty_epoch(self) -> None:
        if self.batches_in_epoch == 0:
            raise ConfigError(
                f"the sampler must yield at least one batch per epoch on rank {self.rank}. Got none "
                f"(corpus too small for max_duration={self.cfg.max_duration} s and {self.world_size} rank(s)?)."
            )
        raise ConfigError(
            f"at least one cut's audio must be readable in an epoch on rank {self.rank}. Got none: every cut "
            f"of its {self.batches_in_epoch} batch(es) was dropped (the first reasons are logged above)."
        )

    def _note_dropped(self, dropped: dict[str, str], progress: Progress) -> None:
        """Warn about the first few cuts whose audio could not be read; count every one."""
        for cut_id, reason in dropped.items():
            if self.num_cuts_dropped < MAX_DROP_WARNINGS:
                log.warning("cut %s: its audio cannot be read, dropping it from its batch: %s", cut_id, reason)
            self.num_cuts_dropped += 1
            if self.num_cuts_dropped == MAX_DROP_WARNINGS:
                log.warning("further cuts whose audio cannot be read are dropped without a warning each; "
                            "the progress lines count them")
        progress.num_cuts_dropped = self.num_cuts_dropped

    def _skip_empty(self, batch: dict[str, Any]) -> bool:
        """True when this step is skipped: this batch (or, under DDP, any rank's) lost every cut."""
        empty = not batch["cut_ids"]
        if self.world_size > 1:  # ranks must step together, or the gradient all-reduce would hang
            import torch.distributed as dist

            flag = torch.tensor([1.0 if empty else 0.0], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            empty = bool(flag.item())
        return empty

    def _maybe_checkpoint(self) -> None:
        last = self.step >= self.cfg.num_steps
        if self.step % self.cfg.checkpoint_every and not last:
            return
        rng = self._rng_of_every_rank()
        if self.rank == 0:
            path = save_checkpoint(self.state(rng), self.cfg.exp_dir, self.cfg.keep_last)
            log.info("saved %s", path)


def train(cfg: TrainConfig) -> list[dict[str, float]]:
    """Run (or resume) stage-1 KD training.

    Returns the per-step loss values of this call (``whisper``, ``beats``,
    ``ecapa``, ``total``, ``grad_norm``, ``lr``).

    Examples
    --------
    >>> cfg = TrainConfig(cuts=("train.jsonl.gz",), stores=("teachers.zarr",), exp_dir="exp", student="tiny")
    >>> history = train(cfg)  # doctest: +SKIP
    """
    trainer = Trainer(cfg)
    if trainer.resume() and trainer.step >= cfg.num_steps:
        if trainer.rank == 0:
            log.warning("nothing left to train: checkpoint at step %d >= num_steps %d (raise --num-steps to "
                        "train on)", trainer.step, cfg.num_steps)
        return []
    Path(cfg.exp_dir).mkdir(parents=True, exist_ok=True)  # only once the inputs and any checkpoint check out
    if trainer.rank == 0:  # the resolved config, next to what it produced
        (Path(cfg.exp_dir) / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    return trainer.run()
