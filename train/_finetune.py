"""Stage-2 multi-task fine-tuning: ASR, tagging and speaker heads on the stage-1 student, KD kept as auxiliary.

The loop, exact resume, DDP, checkpoints and progress lines are stage 1's
(:class:`mt2kd.train._runner.Runner`); this module says what the model is,
which parameters train when, and how a batch becomes the losses:

    total = asr_weight x asr + tagging_weight x tagging + speaker_weight x speaker
            + whisper_weight x whisper + beats_weight x beats + ecapa_weight x ecapa

(the last three are stage 1's KD terms from ``_losses.py``, on the cuts the
stores hold). A fine-tuning checkpoint (kind ``"finetune"``) carries the
tokenizer's bytes, the speaker list, the label list's path and the ASR
config next to the weights, so evaluation needs nothing else.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from mt2kd.cuts import check_manifests
from mt2kd.errors import CheckpointError, ConfigError
from mt2kd.train._checkpoint import read_checkpoint_of_kind, student_weights
from mt2kd.train._config import StudentConfig
from mt2kd.train._data import LazyStores
from mt2kd.train._finetune_config import FinetuneConfig
from mt2kd.train._finetune_data import (
    FBANK_RATE,
    AlternatingSampler,
    FinetuneDataset,
    LabelSpec,
    check_labels_found,
    crop_speaker_cuts,
    scan_labels,
)
from mt2kd.train._finetune_model import FinetuneModel, build_model, first_head, parameter_groups, set_trainable
from mt2kd.train._loader import check_target_coverage, make_sampler, open_corpora_counted
from mt2kd.train._losses import ResolvedTarget, kd_losses, resolve_targets
from mt2kd.train._runner import Runner, eden_factor, start, to_device
from mt2kd.train._targets import paper_targets
from mt2kd.train._tokenizer import Tokenizer
from mt2kd.train._zipformer import set_training_step

log = logging.getLogger(__name__)

TASK_LOSSES = ("asr", "tagging", "speaker")  # the supervised terms, each weighted by <name>_weight


class FinetuneTrainer(Runner):
    """Everything one stage-2 run holds. Use :func:`finetune`."""

    kind = "finetune"
    model: FinetuneModel
    stage_name = "stage-2 fine-tuning"

    def __init__(self, cfg: FinetuneConfig) -> None:
        super().__init__(cfg)
        check_manifests(cfg.cuts)
        init = read_checkpoint_of_kind(cfg.init, "kd", "--init") if cfg.init else None
        self.tokenizer = Tokenizer.load(cfg.tokenizer) if cfg.tokenizer else None
        self.student_config = self._student_config(init)
        self.kd_targets = self._kd_targets()
        num_classes = first_head(self.student_config, "mean").dim
        corpus = scan_labels(cfg.cuts, num_classes, cfg.labels)
        check_labels_found(corpus, self.tokenizer is not None, bool(cfg.stores), cfg.cuts)
        if self.rank == 0:
            log.info("fine-tuning on %s", corpus.line())
        self.labels = LabelSpec(num_classes, corpus.speakers, cfg.labels)
        self.asr_config = (dataclasses.replace(cfg.asr, vocab_size=self.tokenizer.vocab_size)
                           if self.tokenizer is not None else None)
        torch.manual_seed(cfg.seed)
        self.model = build_model(self.student_config, self.asr_config, len(corpus.speakers), cfg).to(self.device)
        if init is not None:
            self._load_init(init)
        encoder, heads, _ = parameter_groups(self.model)
        self.optimizer = torch.optim.AdamW([{"params": encoder, "lr": cfg.lr * cfg.encoder_lr_scale},
                                            {"params": heads, "lr": cfg.lr}], lr=cfg.lr,
                                           weight_decay=cfg.weight_decay)
        factor = lambda s: eden_factor(s, cfg.warmup_steps, cfg.lr_steps)  # noqa: E731
        self.scheduler = self.make_scheduler([factor, factor])
        self.sampler = self._make_sampler()
        self.encoder_trains: bool | None = None  # the phase the parameters are set for (None: not yet)
        self.ddp_model = self.model
        self.enter_phase()

    def _make_sampler(self) -> Any:
        """One bucketing sampler over the muxed corpora, or (``batches=alternate``) one per corpus in turn."""
        cfg = self.cfg

        def sampler_of(paths: tuple[str, ...], repeats: tuple[int, ...]) -> Any:
            corpora, num_cuts = open_corpora_counted(paths, repeats, seed=cfg.seed)
            return make_sampler(corpora, cfg.max_duration, shuffle=cfg.shuffle, num_buckets=cfg.num_buckets,
                                buffer_size=cfg.buffer_size, seed=cfg.seed, world_size=self.world_size,
                                rank=self.rank, num_cuts=num_cuts)

        if cfg.batches == "mixed":
            return sampler_of(cfg.cuts, cfg.repeats)
        repeats = cfg.repeats or (1,) * len(cfg.cuts)
        return AlternatingSampler([sampler_of((path,), (times,)) for path, times in zip(cfg.cuts, repeats)])

    def sampler_snapshot(self) -> dict[str, Any]:
        if isinstance(self.sampler, AlternatingSampler):
            return self.sampler.state_dict(self.batches_in_epoch)
        return super().sampler_snapshot()

    def _student_config(self, init: dict[str, Any] | None) -> StudentConfig:
        if init is not None:
            return StudentConfig.from_dict(init["student_config"])
        config = StudentConfig.preset(self.cfg.student)
        if self.cfg.stores:  # from scratch: the KD heads as wide as the stores' targets, as stage 1 makes them
            from mt2kd.train._config import TrainConfig
            from mt2kd.train._trainer import student_config_for

            config = student_config_for(TrainConfig(cuts=self.cfg.cuts, stores=self.cfg.stores,
                                                    student=self.cfg.student))
        return config

    def _kd_targets(self) -> list[ResolvedTarget]:
        """Stage 1's paper terms with this run's weights, on the student's own heads of the same names.

        A head the student lacks (a stage-1 run with other targets), or a
        teacher the stores lack, has no term here (said in the log); a
        stored teacher whose width does not fit its head is refused.
        """
        if not self.cfg.stores:
            return []
        store = LazyStores(self.cfg.stores).get()
        check_target_coverage(self.cfg.cuts, store)
        cfg, heads = self.cfg, {h.name: h for h in self.student_config.resolved_heads()}
        wanted = paper_targets((cfg.whisper_teacher, cfg.whisper_weight), (cfg.beats_teacher, cfg.beats_weight),
                               (cfg.ecapa_teacher, cfg.ecapa_weight), self.student_config.sv_block)
        kept = [t for t in wanted if t.weight > 0 and t.name in heads and t.teacher in store.specs]
        for t in wanted:
            if t.weight > 0 and t not in kept and self.rank == 0:
                log.warning("KD term %r left out: the student has no head %r or the stores no teacher %r",
                            t.name, t.name, t.teacher)
        resolved = resolve_targets(kept, store.specs)
        for r in resolved:
            if r.head.dim != heads[r.name].dim:
                raise ConfigError(f"KD term {r.name!r}: teacher {r.target.teacher!r} in the stores must fit the "
                                  f"student's {r.name!r} head ({heads[r.name].dim} wide). Got {r.head.dim}.")
        return [dataclasses.replace(r, head=heads[r.name]) for r in resolved]

    def _load_init(self, init: dict[str, Any]) -> None:
        try:
            self.model.student.load_state_dict(student_weights(init))
        except RuntimeError as e:
            raise CheckpointError(f"--init {self.cfg.init!r} must hold weights of its own student_config. "
                                  f"Got: {e}") from e
        if self.rank == 0:
            log.info("starting from %s (stage-1 step %s)", self.cfg.init, init.get("step"))

    def base_lrs(self) -> list[float]:
        return [self.cfg.lr * self.cfg.encoder_lr_scale, self.cfg.lr]

    def extra_state(self) -> dict[str, Any]:
        return {
            "asr_config": None if self.asr_config is None else self.asr_config.to_dict(),
            "tokenizer": None if self.tokenizer is None else self.tokenizer.to_bytes(),
            "speakers": list(self.labels.speakers),
            "label_file": self.cfg.labels,
            "init": self.cfg.init,
        }

    def load_model_state(self, path: Path, data: dict[str, Any]) -> None:
        saved = list(data.get("speakers") or [])
        if saved != list(self.labels.speakers):
            raise ConfigError(f"the training speakers must be those of {str(path)!r} to resume it ({len(saved)} "
                              f"speakers). Got {len(self.labels.speakers)} from the manifests now: resume with "
                              f"the same --cuts, or fine-tune in a new --exp-dir.")
        super().load_model_state(path, data)

    def enter_phase(self) -> None:
        """Freeze or unfreeze the encoder for the current step (and rebuild DDP when that changes)."""
        trains = self.step >= self.cfg.freeze_encoder_steps
        if trains == self.encoder_trains:
            return
        set_trainable(self.model, trains, self.cfg.freeze_sv, self._used_heads())
        self.encoder_trains = trains
        self.ddp_model = self.wrap_ddp()  # DDP registers the parameters that need gradients when it is built
        if self.rank == 0 and self.step:
            log.info("step %d: the encoder trains from now on at lr x %g", self.step, self.cfg.encoder_lr_scale)

    def _used_heads(self) -> set[str]:
        """The student heads some loss of this run reads: the KD terms', M_AT (tagging), M_SV (speaker layer)."""
        used = {t.name for t in self.kd_targets} | {first_head(self.student_config, "mean").name}
        if self.model.speaker is not None:
            used.add(first_head(self.student_config, "attentive").name)
        return used

    def make_loader(self) -> Any:
        from torch.utils.data import DataLoader

        teachers = list(dict.fromkeys(t.target.teacher for t in self.kd_targets))
        dataset = FinetuneDataset(self.cfg.stores if teachers else (), teachers, self.labels)
        return DataLoader(dataset, sampler=self.sampler, batch_size=None, num_workers=self.cfg.num_workers,
                          persistent_workers=self.cfg.num_workers > 0, generator=torch.Generator())

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        self.enter_phase()
        set_training_step(self.model, self.step)
        if self.cfg.speaker_crop > 0:
            batch = crop_speaker_cuts(batch, round(self.cfg.speaker_crop * FBANK_RATE))
        batch = to_device(batch, self.device)
        labels = {**batch["labels"], "tokens": self._tokens(batch["labels"]["texts"])}
        self.ddp_model.train()
        use_bf16 = self.cfg.bf16 and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            out, losses = self.ddp_model(batch["fbank"], batch["num_frames"], labels)
        total = sum(getattr(self.cfg, f"{name}_weight") * losses[name] for name in TASK_LOSSES if name in losses)
        if self.kd_targets:
            kd = kd_losses(out, batch["targets"], self.kd_targets)
            total = total + kd.pop("total")
            losses.update(kd)
        losses["total"] = total  # type: ignore[assignment]
        values = {k: float(v.detach()) for k, v in losses.items()}
        step_values = self.optimiser_step(losses["total"])
        encoder_lr = self.scheduler.get_last_lr()[0] if self.encoder_trains else 0.0
        return {**values, **step_values, "encoder_lr": float(encoder_lr)}

    def _tokens(self, texts: list[str | None]) -> list[list[int] | None]:
        if self.tokenizer is None:
            return [None] * len(texts)
        present = [i for i, text in enumerate(texts) if text]
        encoded = self.tokenizer.encode([texts[i] for i in present]) if present else []  # type: ignore[misc]
        tokens: list[list[int] | None] = [None] * len(texts)
        for i, ids in zip(present, encoded):
            tokens[i] = ids or None
        return tokens


def finetune(cfg: FinetuneConfig) -> list[dict[str, float]]:
    """Run (or resume) stage-2 fine-tuning.

    Returns the per-step values of this call: each loss the run has
    (``transducer``, ``ctc``, ``asr``, ``tagging``, ``speaker``, the KD terms,
    ``total``), ``grad_norm``, ``lr`` (the heads') and ``encoder_lr``.

    Examples
    --------
    >>> cfg = FinetuneConfig(cuts=("train.jsonl.gz",), init="exp/avg.pt", tokenizer="bpe", exp_dir="exp-ft")
    >>> history = finetune(cfg)  # doctest: +SKIP
    """
    return start(FinetuneTrainer(cfg), "finetune_config.json")
