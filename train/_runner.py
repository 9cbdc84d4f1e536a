"""What every training stage shares: ranks and device, exact resume, checkpoints, the step loop.

A stage (stage-1 KD in ``_trainer.py``, stage-2 fine-tuning in
``_finetune.py``) subclasses :class:`Runner`, builds its model, optimiser,
scheduler and sampler, and says how one batch becomes one optimiser step.
The runner does the rest the same way for both: resume from the latest
checkpoint of ``exp_dir`` (model, optimiser, scheduler, sampler position,
every rank's RNG states), skip batches that lost every cut, checkpoint every
``checkpoint_every`` steps and at the end, and report progress.

The config of a stage needs these fields (both TrainConfig and
FinetuneConfig have them): ``exp_dir``, ``num_steps``, ``seed``, ``lr``,
``weight_decay``, ``max_duration``, ``checkpoint_every``, ``keep_last``,
``log_every``, ``device``, ``student``.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mt2kd.errors import CheckpointError, ConfigError
from mt2kd.train._checkpoint import (
    capture_rng,
    read_latest_checkpoint,
    restore_rng,
    save_checkpoint,
)
from mt2kd.train._loader import restore_sampler, sampler_state
from mt2kd.train._progress import Progress

log = logging.getLogger(__name__)

MAX_DROP_WARNINGS = 5  # unreadable cuts warned about one by one; the rest are counted in the progress lines

# StudentConfig fields a resumed model may change: they hold no weights
_SHAPE_FREE_FIELDS = ("dropout",)

# fields whose change invalidates the saved sampler position (the batches would be other batches)
SAMPLER_FIELDS = ("cuts", "repeats", "max_duration", "num_buckets", "buffer_size", "shuffle", "seed", "batches")


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


def changed_settings(saved: dict[str, Any], now: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Fields whose value differs between a checkpoint's train_config and this run's: name -> (old, new).

    Examples
    --------
    >>> changed_settings({"lr": 0.003, "seed": 1}, {"lr": 0.0001, "seed": 1, "bf16": True})
    {'lr': (0.003, 0.0001)}
    """
    return {name: (saved[name], value) for name, value in now.items() if name in saved and saved[name] != value}


def distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank), initialising the process group under torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1, 0
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world_size, int(os.environ.get("LOCAL_RANK", "0"))


def pick_device(device: str, local_rank: int) -> torch.device:
    """The torch device of this rank for a config's ``device`` ("auto", "cpu" or "cuda")."""
    if device == "cuda" and local_rank >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        seen = f"{count} CUDA device(s)" if count else "no CUDA device"
        raise ConfigError(f"device 'cuda' must be a GPU this machine shows (local rank {local_rank}). Got {seen} "
                          f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}). "
                          f"Run on a GPU node, or pass --device cpu or auto.")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def to_device(value: Any, device: torch.device) -> Any:
    """Tensors of a batch (nested dicts, lists) moved to ``device``; everything else as it is."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
        return [to_device(v, device) for v in value]
    return value


class Runner:
    """The loop shared by the training stages. Subclasses set ``model``, ``optimizer``, ``scheduler``,
    ``sampler``, ``student_config`` and ``ddp_model``, and define :meth:`train_step` and :meth:`make_loader`.
    """

    kind = "kd"  # checkpoint kind this stage writes and resumes ("kd": stage 1, "finetune": stage 2)
    stage_name = "stage-1 KD"  # how errors and logs name the stage

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.rank, self.world_size, local_rank = distributed()
        self.device = pick_device(cfg.device, local_rank)
        self.step = 0
        self.batches_in_epoch = 0  # batches consumed (trained on or skipped) in the sampler's current epoch
        self.num_cuts_dropped = 0  # cuts this call dropped because their audio could not be read
        self.model: torch.nn.Module
        self.ddp_model: torch.nn.Module
        self.optimizer: torch.optim.Optimizer
        self.scheduler: torch.optim.lr_scheduler.LambdaLR
        self.sampler: Any
        self.student_config: Any

    # ---- what a stage defines -------------------------------------------------------------------------
    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        raise NotImplementedError

    def make_loader(self) -> Any:
        raise NotImplementedError

    def extra_state(self) -> dict[str, Any]:
        """Stage-specific checkpoint entries (plain values and tensors only)."""
        return {}

    def max_grad_norm(self) -> float:
        """The global gradient-norm clip before each optimiser step (inf: none)."""
        return float(self.cfg.grad_clip)

    def base_lrs(self) -> list[float]:
        """The base learning rate of each optimiser group under this run's config."""
        return [self.cfg.lr] * len(self.optimizer.param_groups)

    def sampler_snapshot(self) -> dict[str, Any]:
        """The sampler's state as of the last batch consumed (workers may have drawn more)."""
        return sampler_state(self.sampler, self.batches_in_epoch)

    def load_model_state(self, path: Path, data: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(data["model"])
        except RuntimeError as e:
            raise CheckpointError(f"weights in {str(path)!r} must fit this run's student. Got: {e}") from e

    # ---- shared machinery -----------------------------------------------------------------------------
    def wrap_ddp(self, **options: Any) -> torch.nn.Module:
        if self.world_size <= 1:
            return self.model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=ids, **options)

    def make_scheduler(self, factors: list[Callable[[int], float]]) -> torch.optim.lr_scheduler.LambdaLR:
        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, factors)

    def state(self, rng: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "student_config": self.student_config.to_dict(),
            "train_config": self.cfg.to_dict(),
            "step": self.step,
            "batches_in_epoch": self.batches_in_epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler_snapshot(),
            "rng": rng,  # one entry per rank: each draws its own dropout masks
            **self.extra_state(),
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
        latest = read_latest_checkpoint(self.cfg.exp_dir, log.warning if self.rank == 0 else log.debug)
        if latest is None:
            return False
        path, data = latest
        self.check_kind(path, data)
        self._check_student(path, data)
        self.load_model_state(path, data)
        self.optimizer.load_state_dict(data["optimizer"])
        self.scheduler.load_state_dict(data["scheduler"])
        self._apply_optimiser_settings()
        rng = data["rng"] if isinstance(data["rng"], list) else [data["rng"]]  # a dict: one rank's, older runs
        restore_rng(rng[self.rank % len(rng)])
        self.step, self.batches_in_epoch = int(data["step"]), int(data["batches_in_epoch"])
        self._restore_position(path, data)
        return True

    def check_kind(self, path: Path, data: dict[str, Any]) -> None:
        """Refuse to resume a checkpoint another stage wrote (stage-1 KD in a fine-tuning exp_dir, say)."""
        kind = data.get("kind", "kd")  # checkpoints from before kinds were recorded are all stage-1
        if kind != self.kind:
            raise CheckpointError(
                f"{str(path)!r} must be a {self.kind!r} checkpoint to resume {self.stage_name} in "
                f"{str(self.cfg.exp_dir)!r}. Got a {kind!r} checkpoint: give this run its own --exp-dir.")

    def _restore_position(self, path: Path, data: dict[str, Any]) -> None:
        changed = changed_settings(data["train_config"], self.cfg.to_dict())
        moved = [name for name in changed if name in SAMPLER_FIELDS]
        saved_ranks = int(data["sampler"]["world_size"])
        if saved_ranks != self.world_size:
            moved.append("ranks")
            changed["ranks"] = (saved_ranks, self.world_size)
        say = log.warning if self.rank == 0 else log.debug  # one rank tells: every rank resumes alike
        if moved:
            say(
                "resuming %s with changed %s: the sampler cannot resume mid-epoch with them, so training goes "
                "on at step %d with its epoch %d from the start (not an exact resume)", path,
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
        tell("resumed from %s at step %d", path, self.step)

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
        base_lrs = self.base_lrs()
        for group, base in zip(self.optimizer.param_groups, base_lrs):
            group["weight_decay"] = self.cfg.weight_decay
            group["initial_lr"] = base
        self.scheduler.base_lrs = list(base_lrs)
        step = self.scheduler.last_epoch
        for group, base, factor in zip(self.optimizer.param_groups, base_lrs, self.scheduler.lr_lambdas):
            group["lr"] = base * factor(step)  # LambdaLR's formula: the saved lr, bit for bit, if nothing changed

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

    def optimiser_step(self, total: torch.Tensor) -> dict[str, float]:
        """Backward, clip, step the optimiser and the schedule; the grad norm and each group's lr."""
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm())
        self.optimizer.step()
        self.scheduler.step()
        return {"grad_norm": float(grad_norm), "lr": float(self.scheduler.get_last_lr()[-1])}  # the heads' group

    def run(self) -> list[dict[str, float]]:
        """Train until ``num_steps``; returns this call's per-step losses."""
        history: list[dict[str, float]] = []
        progress = Progress(self.cfg, self.rank, start_step=self.step)
        loader = self.make_loader()
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
                values = self.train_step(batch)
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


def start(runner: Runner, config_name: str) -> list[dict[str, float]]:
    """Resume ``runner`` if its exp_dir holds checkpoints, write the resolved config, run to ``num_steps``."""
    import json

    cfg = runner.cfg
    if runner.resume() and runner.step >= cfg.num_steps:
        if runner.rank == 0:
            log.warning("nothing left to train: checkpoint at step %d >= num_steps %d (raise --num-steps to "
                        "train on)", runner.step, cfg.num_steps)
        return []
    Path(cfg.exp_dir).mkdir(parents=True, exist_ok=True)  # only once the inputs and any checkpoint check out
    if runner.rank == 0:  # the resolved config, next to what it produced
        (Path(cfg.exp_dir) / config_name).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    return runner.run()
