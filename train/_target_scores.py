"""Scoring a trained student on every KD target it was trained with, each with its own loss (``mt2kd eval kd``).

The targets come from the checkpoint's own ``train_config`` (the paper's
three for a checkpoint without one), resolved against the stores being
evaluated: a target whose teacher those stores lack is reported unscored.
Each target's value is its training loss averaged over every item of the
evaluation set (valid aligned frames, or cuts with the target), so it does
not depend on the batch size.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mt2kd.train._checkpoint import read_checkpoint
from mt2kd.train._config import StudentConfig, TrainConfig
from mt2kd.train._data import fetch_targets
from mt2kd.train._losses import ResolvedTarget, resolve_targets, target_loss_and_count
from mt2kd.train._model import StudentOutput

log = logging.getLogger(__name__)


class TargetScores:
    """Running sums of each KD target's loss over the batches of an evaluation.

    Examples
    --------
    >>> scores = TargetScores("exp/avg.pt", store.specs)  # doctest: +SKIP
    >>> scores.add(model(fbank, num_frames), cuts, store)  # doctest: +SKIP
    >>> scores.summary()["whisper"]["value"]  # doctest: +SKIP
    0.41
    """

    def __init__(self, checkpoint: str | Path, specs: Mapping[str, Any]) -> None:
        data = read_checkpoint(checkpoint)
        student = StudentConfig.from_dict(data["student_config"])
        cfg = TrainConfig.from_dict(data.get("train_config") or {})
        targets = cfg.kd_targets(student.sv_block)
        self.all = targets
        served = [t for t in targets if t.teacher in specs]
        self.targets: list[ResolvedTarget] = resolve_targets(served, specs)
        widths = {h.name: h.dim for h in student.resolved_heads()}
        for target in [t for t in self.targets if widths.get(t.name, t.head.dim) != t.head.dim]:
            log.warning("target %s: the student's head is %d wide, teacher %r of the stores gives %d: not scored "
                        "(are these the stores it was trained from?)", target.name, widths[target.name],
                        target.target.teacher, target.head.dim)
            self.targets.remove(target)
        self.sums = {t.name: 0.0 for t in self.targets}
        self.counts = {t.name: 0 for t in self.targets}

    def add(self, out: StudentOutput, cuts: Sequence[Any], store: Any) -> None:
        """Add one batch: ``out`` is the student's output for ``cuts``, in their order."""
        if not self.targets:
            return
        teachers = list(dict.fromkeys(t.target.teacher for t in self.targets))
        batch = fetch_targets(cuts, store, teachers)
        for target in self.targets:
            if target.name not in out.outputs:
                continue
            value, count = target_loss_and_count(out, target, batch.get(target.target.teacher))
            self.sums[target.name] += float(value.detach().double()) * count
            self.counts[target.name] += count

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per target name: its teacher, head, loss, block, layer, weight, mean loss (None: unscored), items."""
        out = {}
        for t in self.all:
            count = self.counts.get(t.name, 0)
            out[t.name] = {"teacher": t.teacher, "head": t.head, "loss": t.loss, "block": t.block, "layer": t.layer,
                           "weight": t.weight, "value": self.sums[t.name] / count if count else None,
                           "num_items": count}
        return out


