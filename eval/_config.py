"""The configurations of evaluation runs (``eval kd/teachers``, ``eval student``); each is copied into its report."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from mt2kd._typed import from_dict
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
        return from_dict(cls, data)


METHODS = ("greedy", "beam", "ctc")  # decoding methods of eval student: transducer greedy and beam, CTC greedy


@dataclasses.dataclass(frozen=True)
class StudentEvalConfig:
    """What ``mt2kd eval student`` scores; each field is its flag (``--test-set`` for test_sets).

    Examples
    --------
    >>> StudentEvalConfig("avg.pt", ("clean=test-clean.jsonl.gz",)).set_names()
    ['clean']
    """

    checkpoint: str  # a fine-tuned checkpoint (or a stage-1 one: mAP and EER only)
    test_sets: tuple[str, ...]  # CutSet manifests, each "PATH" or "NAME=PATH" (name: the file name by default)
    stores: tuple[str, ...] = ()  # teacher stores: adds the KD L1 to the frames teacher (none needed)
    methods: tuple[str, ...] = METHODS  # decoding methods: transducer greedy and beam, CTC greedy
    beam: int = 4  # hypotheses kept by modified beam search
    trials: str | None = None  # cut-ID trials or a VoxCeleb1 list, applied to every set whose cuts it names
    labels: str | None = None  # label list for event names (default: the one the student was trained with)
    max_cuts: int | None = None  # score only the first N cuts of each set
    num_target_trials: int = 1000  # same-speaker trials drawn per set without --trials
    num_nontarget_trials: int = 1000  # different-speaker trials drawn per set without --trials
    seed: int = 0  # seed of the trial drawing
    batch_size: int = 8  # cuts per forward pass
    device: str = "cpu"  # torch device of the student
    frames_teacher: str = "whisper"  # store teacher of the KD L1

    def __post_init__(self) -> None:
        if not self.test_sets:
            raise ConfigError("test_sets must name at least one manifest (--test-set). Got none.")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"methods must be among {list(METHODS)}. Got {unknown}.")
        for name in ("beam", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1. Got {getattr(self, name)}.")
        names = self.set_names()
        if len(set(names)) != len(names):
            raise ConfigError(f"test sets must have distinct names (use NAME=PATH). Got {names}.")

    def sets(self) -> list[tuple[str, str]]:
        """(name, manifest path) of each test set."""
        found = []
        for spec in self.test_sets:
            name, sep, path = spec.partition("=")
            if not sep:
                path, name = spec, Path(spec).name.split(".")[0]
            found.append((name, path))
        return found

    def set_names(self) -> list[str]:
        return [name for name, _ in self.sets()]

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudentEvalConfig:
        return from_dict(cls, data)
