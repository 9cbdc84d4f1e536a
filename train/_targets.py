"""KD targets as configuration: which teacher output each student head learns, and how.

A :class:`KDTarget` names a store teacher, the student block its head reads,
the head kind, the loss kind, its weight and how teacher frames meet the
student's 25 Hz. The trainer reads a list of them (``TrainConfig.targets``);
an empty list means :func:`paper_targets`, built from today's shortcut flags.

Head and loss kinds are registries (``mt2kd.train._heads.HEADS``,
``mt2kd.train._losses.LOSSES``): a new kind is one entry there. This module
stays torch-free so configs and ``--help`` load fast; names are checked
against the registries when a run resolves its targets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from mt2kd._typed import check_fields, typed_values
from mt2kd.errors import ConfigError

STUDENT_FRAME_RATE = 25.0  # Hz: the student's frame rate after 4x subsampling of 100 Hz fbank
LAST_BLOCK = -1  # ``block`` value meaning the student's last block
FRAME_RATE_MODES = ("stack", "average")  # how k teacher frames become one 25 Hz frame


@dataclasses.dataclass(frozen=True)
class KDTarget:
    """One KD term: a student head trained towards one store teacher.

    Examples
    --------
    >>> KDTarget(teacher="whisper_l8", block=4, head="frames", loss="l1_logsigmoid_cos").name
    'whisper_l8'
    >>> KDTarget.from_dict(KDTarget(teacher="ecapa", head="attentive", loss="cos").to_dict()).loss
    'cos'
    """

    teacher: str  # store teacher name whose outputs are the targets
    head: str = "frames"  # "frames" (linear per frame), "mean" (linear, mean over frames), "attentive" (stats pooling)
    loss: str = "l1"  # "l1", "mse", "l1_logsigmoid_cos" (DistilHuBERT), "bce" (teacher probabilities), "cos" (1 - cos)
    block: int = LAST_BLOCK  # 1-based student block the head reads; -1 the last (negative counts from the end)
    weight: float = 1.0  # multiplies the term in the total loss
    frame_rate: str = "stack"  # teacher frames at k x 25 Hz: "stack" k frames into one, or "average" them
    layer: int | None = None  # a teacher with a layer axis (layers=8,16,-1): the layer this reads; None: all
    name: str = ""  # term name in logs, checkpoints and eval reports ("" = the teacher name, + _l<layer>)

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.teacher if self.layer is None else f"{self.teacher}_l{self.layer}")
        for field in ("teacher", "name"):
            value = getattr(self, field)
            if not value or not value.replace("_", "").replace("-", "").isalnum():
                raise ConfigError(f"target {field} must be a non-empty identifier. Got {value!r}.")
        if self.name in ("total", "grad_norm", "lr"):
            raise ConfigError(f"target name must not be one of the logged totals. Got {self.name!r}.")
        if self.block == 0:
            raise ConfigError(f"target {self.name!r}: block must be 1-based (or -1 for the last). Got 0.")
        if self.weight < 0:
            raise ConfigError(f"target {self.name!r}: weight must be >= 0. Got {self.weight!r}.")
        if self.frame_rate not in FRAME_RATE_MODES:
            raise ConfigError(f"target {self.name!r}: frame_rate must be one of {list(FRAME_RATE_MODES)}. "
                              f"Got {self.frame_rate!r}.")

    def block_index(self, num_blocks: int) -> int:
        """0-based index into a student's ``hidden_states`` of ``num_blocks`` blocks (any encoder)."""
        index = self.block - 1 if self.block > 0 else num_blocks + self.block
        if not 0 <= index < num_blocks:
            raise ConfigError(f"target {self.name!r}: block must be in [1, {num_blocks}] or [-{num_blocks}, -1] "
                              f"for a student of {num_blocks} blocks. Got {self.block}.")
        return index

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "target: ") -> KDTarget:
        if not isinstance(data, dict):
            raise ConfigError(f"{where.rstrip(': ')} must be a mapping of KDTarget fields. Got {data!r}.")
        try:
            check_fields(cls, data)
        except ConfigError as e:
            raise ConfigError(f"{where}{e}") from None
        if "teacher" not in data:
            raise ConfigError(f"{where}a target must name its store teacher ('teacher'). Got {sorted(data)}.")
        return cls(**typed_values(cls, data, where))


def paper_targets(whisper: tuple[str, float] = ("whisper", 1.0), beats: tuple[str, float] = ("beats", 1.0),
                  ecapa: tuple[str, float] = ("ecapa", 1.0), sv_block: int = 3) -> tuple[KDTarget, ...]:
    """The paper's three terms: whisper frames L1, beats BCE on mean-pooled logits, ecapa 1 - cos.

    Each argument is ``(store teacher name, weight)``; the terms keep the
    names ``whisper``, ``beats`` and ``ecapa`` whatever the teacher names.

    Examples
    --------
    >>> [t.loss for t in paper_targets()]
    ['l1', 'bce', 'cos']
    """
    return (
        KDTarget(name="whisper", teacher=whisper[0], head="frames", loss="l1", weight=whisper[1]),
        KDTarget(name="beats", teacher=beats[0], head="mean", loss="bce", weight=beats[1]),
        KDTarget(name="ecapa", teacher=ecapa[0], head="attentive", loss="cos", weight=ecapa[1], block=sv_block),
    )


def parse_target(text: str) -> KDTarget:
    """A ``--target`` flag value: ``key=value`` pairs separated by commas.

    Examples
    --------
    >>> parse_target("teacher=whisper_l8,block=2,loss=l1_logsigmoid_cos").block
    2
    """
    data: dict[str, Any] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        key, sep, value = part.partition("=")
        if not sep:
            raise ConfigError(f"--target must be key=value pairs separated by commas. Got {part!r} in {text!r}.")
        data[key.strip()] = _scalar(value.strip())
    return KDTarget.from_dict(data, f"--target {text!r}: ")


def _scalar(value: str) -> Any:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def checked_targets(targets: Sequence[KDTarget]) -> tuple[KDTarget, ...]:
    """``targets`` with unique names (each names a log column and a head)."""
    names = [t.name for t in targets]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"target names must be unique (set 'name' to tell two heads on one teacher apart). "
                          f"Got {twice} more than once.")
    return tuple(targets)
