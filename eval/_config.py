"""The one configuration of an evaluation run; it is copied into every report."""

from __future__ import annotations

import dataclasses
from typing import Any

from mt2kd.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What to evaluate and how; the CLI flags of ``mt2kd eval kd/teachers`` map onto these fields.

    Examples
    --------
    >>> EvalConfig(cuts=("dev.jsonl.gz",), stores=("labels.zarr",)).num_target_trials
    1000
    """

    cuts: tuple[str, ...]  # CutSet manifests, read in order
    stores: tuple[str, ...]  # teacher stores holding the cuts' targets
    checkpoint: str | None = None  # student checkpoint; None evaluates the teachers only
    trials: str | None = None  # trials file; None draws trials from the supervisions' speakers
    labels: str | None = None  # label list mapping event names to class indices
    max_cuts: int | None = None  # score only the first N cuts (quick checks)
    num_target_trials: int = 1000  # same-speaker trials to draw when no trials file is given
    num_nontarget_trials: int = 1000  # different-speaker trials to draw when no trials file is given
    seed: int = 0  # seed of the trial drawing
    pseudo_label_threshold: float = 0.5  # probability above which a teacher output counts as a label
    batch_size: int = 8  # cuts per student forward pass
    device: str = "cpu"  # torch device of the student
    frames_teacher: str = "whisper"  # store teacher whose frames the student's ASR head imitates
    tagging_teacher: str = "beats"  # store teacher whose logits the AT head imitates
    speaker_teacher: str = "ecapa"  # store teacher whose embeddings the SV head imitates

    def __post_init__(self) -> None:
        if not self.cuts:
            raise ConfigError("cuts must name at least one manifest. Got none.")
        if not self.stores:
            raise ConfigError("stores must name at least one teacher store. Got none.")
        if self.max_cuts is not None and self.max_cuts <= 0:
            raise ConfigError(f"max_cuts must be > 0 or None. Got {self.max_cuts}.")
        if self.num_target_trials < 0 or self.num_nontarget_trials < 0:
            raise ConfigError(
                f"trial counts must be >= 0. Got {self.num_target_trials} and {self.num_nontarget_trials}.")
        if not 0.0 < self.pseudo_label_threshold < 1.0:
            raise ConfigError(f"pseudo_label_threshold must be in (0, 1). Got {self.pseudo_label_threshold}.")
        if self.batch_size <= 0:
            raise ConfigError(f"batch_size must be > 0. Got {self.batch_size}.")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["cuts"], data["stores"] = list(self.cuts), list(self.stores)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown EvalConfig fields {unknown}; expected a subset of {sorted(known)}.")
        data = dict(data)
        for key in ("cuts", "stores"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)
