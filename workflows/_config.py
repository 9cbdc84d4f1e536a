"""One frozen config for the whole chain: prepare -> extract -> verify -> train -> finetune -> eval.

The ``extract``, ``train``, ``finetune``, ``eval`` and ``eval_student``
sections are the components' own frozen configs (:class:`ExtractConfig`,
:class:`TrainConfig`, :class:`FinetuneConfig`, :class:`EvalConfig`,
:class:`StudentEvalConfig`); this module only says how they are read from
one file and what a section inherits from the stages before it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from mt2kd._typed import check_fields, read_mapping, typed_values
from mt2kd.errors import ConfigError
from mt2kd.eval import EvalConfig, StudentEvalConfig
from mt2kd.extract import ExtractConfig
from mt2kd.train import FinetuneConfig, TrainConfig, checkpoint_path
from mt2kd.workflows._sections import load_section

_STAGE_2_ALIASES = ("fine_tune", "stage2")  # names people may try for the finetune section: told its name
TOKENIZER_DIR = "bpe"  # folder under the finetune exp_dir where the chain trains the BPE model it needs


@dataclasses.dataclass(frozen=True)
class WorkflowConfig:
    """The chain ``mt2kd run --config FILE`` runs; a YAML or JSON file holds exactly these fields.

    Sections left out are stages left out: without ``train`` the chain stops
    after verify; an ``eval`` section without ``train`` scores the teachers
    from the store (and a student if its ``checkpoint`` is given). A
    ``finetune`` section starts from train's last checkpoint (or its own
    ``init``) and, when it names no tokenizer, first trains a BPE model of
    ``bpe_vocab_size`` pieces on its cuts' transcripts; ``eval_student``
    scores the fine-tuned student on its ``test_sets`` (default: the
    extracted manifests).

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
    finetune: FinetuneConfig | None = None  # stage 2; cuts/stores as train, init: train's last checkpoint
    bpe_vocab_size: int = 500  # pieces of the BPE model the chain trains when finetune names no tokenizer
    eval_student: StudentEvalConfig | None = None  # the fine-tuned student; checkpoint: finetune's last
    student_report: str = ""  # where the eval_student report is written as JSON ("" prints it only)

    def __post_init__(self) -> None:
        if self.report and self.eval is None:
            raise ConfigError(f"report needs an 'eval' section to report on. Got report={self.report!r} "
                              "and no eval section.")
        if self.student_report and self.eval_student is None:
            raise ConfigError(f"student_report needs an 'eval_student' section to report on. Got "
                              f"student_report={self.student_report!r} and no eval_student section.")
        if self.bpe_vocab_size < 2:
            raise ConfigError(f"bpe_vocab_size must be >= 2. Got {self.bpe_vocab_size}.")

    def to_dict(self) -> dict[str, Any]:
        sections = ("train", "eval", "finetune", "eval_student")
        data: dict[str, Any] = {name: getattr(self, name) for name in _SCALARS}
        data.update({name: None if getattr(self, name) is None else getattr(self, name).to_dict()
                     for name in sections})
        return {"extract": self.extract.to_dict(), **data}

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
        finetune = _finetune_section(data, chain, train)
        scalars = {k: data[k] for k in _SCALARS if k in data}
        return cls(extract=extract, train=train, eval=evaluation, finetune=finetune,
                   eval_student=_eval_student_section(data, chain, finetune), **scalars)

    @classmethod
    def load(cls, path: str | Path) -> WorkflowConfig:
        """Read a ``.yaml``/``.yml`` or ``.json`` file; relative paths in it stay relative to the working dir."""
        path = Path(path)
        if path.suffix not in (".yaml", ".yml", ".json"):
            raise ConfigError(f"a workflow config must be .yaml, .yml or .json. Got {path.name!r}.")
        data = read_mapping(path, "workflow config")
        return cls.from_dict(data)


_SCALARS = ("tiny_teachers", "verify", "report", "bpe_vocab_size", "student_report")


def _finetune_section(data: dict[str, Any], chain: dict[str, Any], train: TrainConfig | None) -> FinetuneConfig | None:
    if data.get("finetune") is None:
        return None
    section = data["finetune"]
    defaults = dict(chain)
    if train is not None:  # fine-tune what this chain trained, unless the section names its own init
        defaults["init"] = str(checkpoint_path(train.exp_dir, train.num_steps))
    if isinstance(section, dict):
        exp_dir = section.get("exp_dir") or FinetuneConfig().exp_dir
        defaults["tokenizer"] = str(Path(exp_dir) / TOKENIZER_DIR)
    return load_section(FinetuneConfig, section, "finetune", defaults)


def _eval_student_section(data: dict[str, Any], chain: dict[str, Any],
                          finetune: FinetuneConfig | None) -> StudentEvalConfig | None:
    if data.get("eval_student") is None:
        return None
    defaults: dict[str, Any] = {"test_sets": chain["cuts"]}
    if finetune is not None:  # score what this chain fine-tuned, unless the section names a checkpoint
        defaults["checkpoint"] = str(checkpoint_path(finetune.exp_dir, finetune.num_steps))
    section = data["eval_student"]
    if "checkpoint" not in defaults and not (isinstance(section, dict) and section.get("checkpoint")):
        raise ConfigError("the 'eval_student' section needs a checkpoint: name one, or add a 'finetune' section "
                          "whose last checkpoint it scores. Got neither.")
    return load_section(StudentEvalConfig, data["eval_student"], "eval_student", defaults)


def _check_top_level(cls: type, data: dict[str, Any]) -> None:
    stage_2 = [key for key in _STAGE_2_ALIASES if key in data]
    if stage_2:
        raise ConfigError(f"stage-2 fine-tuning is the 'finetune' section (FinetuneConfig fields). "
                          f"Got a {stage_2[0]!r} section.")
    check_fields(cls, data, "workflow config")
    if not isinstance(data.get("extract"), dict):
        raise ConfigError(f"a workflow config needs an 'extract' section (a mapping). Got {data.get('extract')!r}.")
    typed_values(cls, {k: data[k] for k in _SCALARS if k in data}, "workflow.")
