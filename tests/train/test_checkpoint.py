"""A latest checkpoint that does not read (empty, cut short) is passed over for the previous good one."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from mt2kd.errors import CheckpointError
from mt2kd.train import TrainConfig
from mt2kd.train._checkpoint import list_checkpoints
from mt2kd.train._trainer import train


def _config(corpus: dict[str, Any], exp_dir: Path, num_steps: int) -> TrainConfig:
    return TrainConfig(cuts=(corpus["manifest"],), stores=(corpus["store"],), exp_dir=str(exp_dir), student="tiny",
                       max_duration=3.0, num_buckets=2, buffer_size=100, num_workers=0, lr=3e-3, warmup_steps=10,
                       lr_steps=1000.0, log_every=20, checkpoint_every=2, keep_last=3, num_steps=num_steps)


def test_an_empty_latest_checkpoint_resumes_from_the_previous_one_with_a_warning_naming_both(
        tmp_path: Path, corpus: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    exp = tmp_path / "exp"
    train(_config(corpus, exp, num_steps=6))
    good, latest = list_checkpoints(exp)[-2:]
    latest.write_bytes(b"")  # a full disk, a broken copy
    with caplog.at_level(logging.WARNING, logger="mt2kd.train"):
        history = train(_config(corpus, exp, num_steps=8))
    assert len(history) == 4  # steps 5-8: resumed at step 4
    assert f"checkpoint {str(latest)!r} cannot be read" in caplog.text
    assert f"resuming from the previous good one, {str(good)!r}" in caplog.text
    for path in list_checkpoints(exp)[:-1]:
        path.write_bytes(b"")
    list_checkpoints(exp)[-1].write_bytes(b"")
    with pytest.raises(CheckpointError, match="checkpoint-00000008.pt"):  # none reads: the newest one's error
        train(_config(corpus, exp, num_steps=10))
