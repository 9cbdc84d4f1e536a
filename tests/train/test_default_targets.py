"""The default KD targets train exactly as the three fixed heads did before targets were configurable.

The expected values are the per-step losses of the trainer with fixed
whisper/beats/ecapa heads (main at 08a4deb, this very test file run against
it, one torch thread) on these tiny corpora and configs, written as float hex: the default target list (and the weight flags
as shortcuts) must reproduce them bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mt2kd.train import TrainConfig
from mt2kd.train._trainer import train

GOLDEN = Path(__file__).with_name("default_targets_golden.json")


@pytest.fixture
def deterministic():
    # one intra-op thread: the order of float sums inside a kernel follows the thread count, which other
    # tests of the suite change (extraction workers run in-process), and bit-for-bit needs a fixed order
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)
    torch.set_num_threads(threads)


def _config(manifest: str, store: str, exp_dir: Path, **overrides) -> TrainConfig:
    fields = dict(
        cuts=(manifest,), stores=(store,), exp_dir=str(exp_dir), student="tiny",
        max_duration=3.0, num_buckets=2, buffer_size=100, num_workers=0, lr=3e-3, warmup_steps=4,
        lr_steps=1000.0, log_every=20, checkpoint_every=1000, keep_last=1, num_steps=8, seed=3,
        device="cpu",  # the expected values are CPU float32 ones (a GPU run uses bf16 autocast)
    )
    fields.update(overrides)
    return TrainConfig(**fields)


def _hex(history: list[dict[str, float]]) -> list[dict[str, str]]:
    return [{k: float(h[k]).hex() for k in ("whisper", "beats", "ecapa", "total")} for h in history]


CASES = {
    "defaults": ({}, {}),
    "weights and a cut lacking whisper": (
        {"whisper_weight": 0.5, "beats_weight": 2.0, "ecapa_weight": 0.25}, {"whisper": {"utt-002"}}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_default_targets_give_the_fixed_heads_losses_bit_for_bit(tmp_path, make_cuts, fill_store, deterministic,
                                                                  case) -> None:
    overrides, missing = CASES[case]
    cuts = make_cuts("utt", [0.6, 0.8, 1.0, 1.2, 1.4, 1.6])
    manifest = tmp_path / "cuts.jsonl.gz"
    cuts.to_file(manifest)
    store = fill_store(tmp_path / "t.zarr", cuts, missing=missing)
    history = train(_config(str(manifest), str(store), tmp_path / "exp", **overrides))
    got = _hex(history)
    if not GOLDEN.exists() or case not in json.loads(GOLDEN.read_text()):
        pytest.fail(f"no golden losses for {case!r}: {json.dumps(got)}")
    assert got == json.loads(GOLDEN.read_text())[case]
