"""The workflow config: train/eval sections are TrainConfig/EvalConfig, filled from the chain, checked early."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mt2kd.errors import ConfigError
from mt2kd.eval._config import EvalConfig
from mt2kd.train._config import TrainConfig
from mt2kd.workflows._config import WorkflowConfig
from mt2kd.workflows._demo import demo_config

EXTRACT = {"cuts": ["a.jsonl.gz", "b.jsonl.gz"], "store": "labels.zarr", "teachers": ["whisper=w.pt"]}


def _config(**sections: Any) -> WorkflowConfig:
    return WorkflowConfig.from_dict({"extract": EXTRACT, **sections})


def test_sections_are_the_components_own_configs_filled_from_the_chain() -> None:
    config = _config(train={"exp_dir": "exp1", "num_steps": 40, "lr": 1}, eval={"max_cuts": 5})
    assert isinstance(config.train, TrainConfig) and isinstance(config.eval, EvalConfig)
    assert config.train.cuts == ("a.jsonl.gz", "b.jsonl.gz") and config.train.stores == ("labels.zarr",)
    assert config.train.lr == 1.0 and config.train.student == "paper"  # untouched fields keep their defaults
    assert config.eval.cuts == config.train.cuts and config.eval.stores == ("labels.zarr",)
    assert config.eval.checkpoint == str(Path("exp1") / "checkpoint-00000040.pt")  # train's last checkpoint


def test_explicit_values_win_over_the_chain() -> None:
    config = _config(train={"cuts": ["c.jsonl.gz"], "stores": ["x.zarr", "y.zarr"]},
                     eval={"checkpoint": None, "cuts": ["dev.jsonl.gz"]})
    assert config.train is not None and config.train.cuts == ("c.jsonl.gz",)
    assert config.train.stores == ("x.zarr", "y.zarr")
    assert config.eval is not None and config.eval.checkpoint is None  # null: teachers only
    assert config.eval.cuts == ("dev.jsonl.gz",) and config.eval.stores == ("labels.zarr",)
    no_train = _config(eval={}).eval
    assert no_train is not None and no_train.checkpoint is None  # no train section: nothing to default to


def test_finetune_and_eval_student_sections_follow_the_chain() -> None:
    config = _config(train={"exp_dir": "exp1", "num_steps": 40},
                     finetune={"exp_dir": "ft", "num_steps": 7, "asr": {"joiner_dim": 64}}, eval_student={})
    tuned, scored = config.finetune, config.eval_student
    assert tuned is not None and scored is not None
    assert tuned.cuts == ("a.jsonl.gz", "b.jsonl.gz") and tuned.stores == ("labels.zarr",)
    assert tuned.init == str(Path("exp1") / "checkpoint-00000040.pt")  # train's last checkpoint
    assert tuned.tokenizer == str(Path("ft") / "bpe") and tuned.asr.joiner_dim == 64
    assert scored.checkpoint == str(Path("ft") / "checkpoint-00000007.pt")
    assert scored.test_sets == ("a.jsonl.gz", "b.jsonl.gz")
    assert WorkflowConfig.from_dict(config.to_dict()) == config


def test_round_trip_through_json(tmp_path: Path) -> None:
    config = demo_config(tmp_path / "out")
    path = tmp_path / "run.json"
    path.write_text(json.dumps(config.to_dict()))
    assert WorkflowConfig.load(path) == config
    no_stages = _config()
    assert no_stages.train is None and no_stages.eval is None
    assert WorkflowConfig.from_dict(no_stages.to_dict()) == no_stages


@pytest.mark.parametrize(("sections", "message"), [
    ({"train": {"lr": "fast"}}, "train.lr must be a number. Got 'fast'."),
    ({"train": {"num_steps": 2.5}}, "train.num_steps must be an integer. Got 2.5."),
    ({"train": {"shuffle": "yes"}}, "train.shuffle must be true or false. Got 'yes'."),
    ({"train": {"cuts": "a.jsonl.gz"}}, "train.cuts must be a list of strings. Got 'a.jsonl.gz'."),
    ({"train": {"repeats": [1, "2"]}}, "train.repeats must be a list of integers. Got [1, '2']."),
    ({"train": {"num_steps": 0}}, "in the 'train' section: num_steps must be > 0. Got 0."),
    ({"train": {"student": "huge"}}, "in the 'train' section: student must be one of ['paper', 'tiny', 'zipformer-m', 'zipformer-tiny']. Got 'huge'."),
    ({"train": {"steps": 10}}, "in the 'train' section: unknown TrainConfig fields ['steps']"),
    ({"train": ["exp"]}, "the 'train' section must be a mapping of TrainConfig fields. Got list"),
    ({"eval": {"max_cuts": -1}}, "in the 'eval' section: max_cuts must be > 0 or None. Got -1."),
    ({"eval": {"batch_size": "8"}}, "eval.batch_size must be an integer. Got '8'."),
    ({"eval": {"labels": 3}}, "eval.labels must be a string or null. Got 3."),
    ({"eval": {"plots": "p"}}, "in the 'eval' section: unknown EvalConfig fields ['plots']"),
    ({"verify": "yes"}, "workflow.verify must be true or false. Got 'yes'."),
    ({"extract": {**EXTRACT, "shard_hours": "big"}}, "extract.shard_hours must be a number. Got 'big'."),
    ({"extract": {**EXTRACT, "overwrite": "no"}}, "extract.overwrite must be true or false. Got 'no'."),
    ({"report": "r.json"}, "report needs an 'eval' section"),
    ({"stage2": {}}, "stage-2 fine-tuning is the 'finetune' section (FinetuneConfig fields). Got a 'stage2'"),
    ({"finetune": {"freeze_sv": "yes"}}, "finetune.freeze_sv must be true or false. Got 'yes'."),
    ({"finetune": {"asr": {"joiner_dim": "big"}}}, "asr.joiner_dim must be an integer. Got 'big'."),
    ({"finetune": {"speaker_loss": "arc"}}, "speaker_loss must be one of ['ce', 'aam']. Got 'arc'."),
    ({"eval_student": {}}, "the 'eval_student' section needs a checkpoint"),
    ({"student_report": "s.json"}, "student_report needs an 'eval_student' section"),
    ({"stages": []}, "unknown workflow config fields ['stages']"),
])
def test_bad_sections_fail_naming_the_field(sections: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _config(**sections)
    assert message in str(caught.value)


def test_bad_yaml_file_fails_before_any_stage_runs(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from mt2kd.cli import main

    path = tmp_path / "run.yaml"
    path.write_text(f"extract:\n  cuts: [a.jsonl.gz]\n  store: {tmp_path / 'store'}\n  teachers: [whisper=w.pt]\n"
                    "train:\n  lr: fast\n")
    result = CliRunner().invoke(main, ["run", "--config", str(path)])
    assert result.exit_code == 1 and "train.lr must be a number. Got 'fast'." in result.output
    assert not (tmp_path / "store").exists()


def test_a_config_file_that_does_not_parse_is_named(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("extract:\n  cuts: [a.jsonl.gz\n")
    with pytest.raises(ConfigError, match=f"workflow config '{path}' must be valid YAML"):
        WorkflowConfig.load(path)
