"""One frozen config for the whole chain: prepare -> extract -> verify -> train -> eval.

The ``extract``, ``train`` and ``eval`` sections are the components' own
frozen configs (:class:`ExtractConfig`, :class:`TrainConfig`,
:class:`EvalConfig`); this module only says how they are read from one file
and what a section inherits from the stages before it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from mt2kd.errors import ConfigError
from mt2kd.eval._config import EvalConfig
from mt2kd.extract import ExtractConfig
from mt2kd.train._config import TrainConfig, checkpoint_path
from mt2kd._typed import read_mapping, typed_values
from mt2kd.workflows._sections import load_section

_STAGE_2_KEYS = ("finetune", "fine_tune", "stage2")  # refused with a clear message: not built yet


@dataclasses.dataclass(frozen=True)
class WorkflowConfig:
    """The chain ``mt2kd run --config FILE`` runs; a YAML or JSON file holds exactly these fields.

    Sections left out are stages left out: without ``train`` the chain stops
    after verify; an ``eval`` section without ``train`` scores the teachers
    from the store (and a student if its ``checkpoint`` is given).

    Examples
    --------
    >>> config = WorkflowConfig.load("run.yaml")  # doctest: +SKIP
    >>> config.train.stores  # doctest: +SKIP
    ('labels.zarr',)
    """

    extract: ExtractConfig  # the extraction job (cuts, store, teachers, cluster)
    tiny_teachers: str = ""  # prepare: write tiny RANDOM checkpoints into this folder first ("" to skip)
    verify: bool = True  # read the whole store back and check every cut of the manifests is there
    train: TrainConfig | None = None  # stage-1 KD; cuts/stores default to extract's manifests and store
    eval: EvalConfig | None = None  # cuts/stores as train; checkpoint defaults to train's last checkpoint
    report: str = ""  # where the eval report is written as JSON ("" prints it only)

    def __post_init__(self) -> None:
        if self.report and self.eval is None:
            raise ConfigError(f"report needs an 'eval' section to report on. Got report={self.report!r} "
                              "and no eval section.")

    def to_dict(self) -> dict[str, Any]:
        return {"extract": self.extract.to_dict(), "tiny_teachers": self.tiny_teachers, "verify": self.verify,
                "train": None if self.train is None else self.train.to_dict(),
                "eval": None if self.eval is None else self.eval.to_dict(), "report": self.report}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkflowConfig:
        _check_top_level(cls, data)
        extract = ExtractConfig.from_dict(typed_values(ExtractConfig, data["extract"], "extract."))
        chain: dict[str, Any] = {"cuts": list(extract.cuts), "stores": [extract.store]}
        train = None if data.get("train") is None else load_section(TrainConfig, data["train"], "train", chain)
        eval_defaults = dict(chain)
        if train is not None:  # score what this chain trained, unless the section names a checkpoint
            eval_defaults["checkpoint"] = str(checkpoint_path(train.exp_dir, train.num_steps))
        evaluation = None if data.get("eval") is None else load_section(EvalConfig, data["eval"], "eval",
                                                                         eval_defaults)
        scalars = {k: data[k] for k in ("tiny_teachers", "verify", "report") if k in data}
        return cls(extract=extract, train=train, eval=evaluation, **scalars)

    @classmethod
    def load(cls, path: str | Path) -> WorkflowConfig:
        """Read a ``.yaml``/``.yml`` or ``.json`` file; relative paths in it stay relative to the working dir."""
        path = Path(path)
        if path.suffix not in (".yaml", ".yml", ".json"):
            raise ConfigError(f"a workflow config must be .yaml, .yml or .json. Got {path.name!r}.")
        data = read_mapping(path, "workflow config")
        return cls.from_dict(data)


def _check_top_level(cls: type, data: dict[str, Any]) -> None:
    stage_2 = [key for key in _STAGE_2_KEYS if key in data]
    if stage_2:
        raise ConfigError(f"stage-2 fine-tuning is not part of mt2kd yet, so a workflow cannot run it. "
                          f"Got a {stage_2[0]!r} section; train stage 1 with the 'train' section.")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown workflow config fields {unknown}; expected a subset of {sorted(known)}.")
    if not isinstance(data.get("extract"), dict):
        raise ConfigError(f"a workflow config needs an 'extract' section (a mapping). Got {data.get('extract')!r}.")
    typed_values(cls, {k: data[k] for k in ("tiny_teachers", "verify", "report") if k in data}, "workflow.")
