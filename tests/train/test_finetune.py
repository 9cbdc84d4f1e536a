"""Stage-2 fine-tuning: the freezing schedule, LR groups, exact resume, --init and the checkpoint kinds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mt2kd.cli import main
from mt2kd.errors import CheckpointError
from mt2kd.train import TrainConfig, train
from mt2kd.train._asr import AsrConfig
from mt2kd.train._checkpoint import list_checkpoints, read_checkpoint, write_average
from mt2kd.train._finetune import finetune
from mt2kd.train._finetune_config import FinetuneConfig
from mt2kd.train._runner import eden_factor
from mt2kd.train._tokenizer import Tokenizer

TINY_ASR = AsrConfig(decoder_dim=16, joiner_dim=16)


@pytest.fixture
def stage1(tmp_path: Path, corpus: dict) -> dict:
    """The corpus, a 2-step stage-1 checkpoint of the tiny student, and a BPE model of its transcripts."""
    exp = tmp_path / "kd"
    train(TrainConfig(cuts=(corpus["manifest"],), stores=(corpus["store"],), exp_dir=str(exp), student="tiny",
                      max_duration=3.0, num_buckets=2, buffer_size=100, num_workers=0, num_steps=2,
                      checkpoint_every=2))
    Tokenizer.train([f"utterance {i}" for i in range(6)] * 4, vocab_size=20).save(tmp_path / "bpe")
    return {**corpus, "init": str(list_checkpoints(exp)[-1]), "tokenizer": str(tmp_path / "bpe")}


def _config(stage1: dict, exp_dir: Path, **overrides) -> FinetuneConfig:
    fields = dict(
        cuts=(stage1["manifest"],), stores=(stage1["store"],), init=stage1["init"], tokenizer=stage1["tokenizer"],
        asr=TINY_ASR, exp_dir=str(exp_dir), max_duration=3.0, num_buckets=2, buffer_size=100, num_workers=0,
        lr=3e-3, warmup_steps=2, lr_steps=1000.0, log_every=2, checkpoint_every=1, keep_last=20, device="cpu",
        freeze_encoder_steps=2, freeze_sv=False, num_steps=4,
    )
    fields.update(overrides)
    return FinetuneConfig(**fields)


def _weights(path: str | Path) -> dict[str, torch.Tensor]:
    model = read_checkpoint(path)["model"]
    return {k.removeprefix("student."): v for k, v in model.items()}


def _encoder_keys(weights: dict[str, torch.Tensor]) -> list[str]:
    return [k for k in weights if k.startswith(("frontend.", "blocks."))]


def _same(a: dict, b: dict, keys: list[str]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in keys)


def test_encoder_stays_bitwise_frozen_then_trains_and_the_heads_train_throughout(tmp_path, stage1) -> None:
    history = finetune(_config(stage1, tmp_path / "ft"))
    init = read_checkpoint(stage1["init"])["model"]
    steps = list_checkpoints(tmp_path / "ft")
    assert len(history) == len(steps) == 4
    encoder = _encoder_keys(init)
    for path in steps[:2]:  # the frozen steps: not one bit of the encoder moves
        assert _same(init, _weights(path), encoder), path
    last = _weights(steps[-1])
    assert all(not torch.equal(init[k], last[k]) for k in encoder if k.endswith("weight"))
    first = _weights(steps[0])
    assert not torch.equal(init["heads.beats.linear.weight"], first["heads.beats.linear.weight"])  # from step 1
    assert not torch.equal(read_checkpoint(steps[0])["model"]["asr.ctc_head.weight"],
                           read_checkpoint(steps[-1])["model"]["asr.ctc_head.weight"])


def test_freeze_sv_keeps_the_speaker_branch_bitwise_and_the_rest_trains(tmp_path, stage1) -> None:
    finetune(_config(stage1, tmp_path / "ft", freeze_sv=True, freeze_encoder_steps=1, num_steps=3))
    init = read_checkpoint(stage1["init"])["model"]
    sv_block = read_checkpoint(stage1["init"])["student_config"]["sv_block"]
    branch = [k for k in init if k.startswith(("frontend.", "heads.ecapa."))
              or any(k.startswith(f"blocks.{i}.") for i in range(sv_block))]
    assert branch and all(_same(init, _weights(p), branch) for p in list_checkpoints(tmp_path / "ft"))
    last = _weights(list_checkpoints(tmp_path / "ft")[-1])
    upper = [k for k in init if k.startswith(f"blocks.{sv_block}.") and k.endswith("weight")]
    assert upper and all(not torch.equal(init[k], last[k]) for k in upper)


def test_each_parameter_group_runs_at_its_configured_lr(tmp_path, stage1) -> None:
    cfg = _config(stage1, tmp_path / "ft", lr=2e-3, encoder_lr_scale=0.25, freeze_encoder_steps=2, num_steps=4)
    history = finetune(cfg)
    factors = [eden_factor(s, cfg.warmup_steps, cfg.lr_steps) for s in range(1, 5)]
    assert [h["lr"] for h in history] == pytest.approx([2e-3 * f for f in factors])
    assert [h["encoder_lr"] for h in history] == pytest.approx([0.0, 0.0] + [5e-4 * f for f in factors[2:]])
    groups = read_checkpoint(list_checkpoints(tmp_path / "ft")[-1])["optimizer"]["param_groups"]
    assert [g["initial_lr"] for g in groups] == pytest.approx([5e-4, 2e-3])
    assert [g["lr"] for g in groups] == pytest.approx([5e-4 * factors[-1], 2e-3 * factors[-1]])


def test_resume_across_the_unfreezing_matches_a_straight_run(tmp_path, stage1) -> None:
    torch.use_deterministic_algorithms(True)
    try:
        straight = finetune(_config(stage1, tmp_path / "a", num_steps=6, freeze_encoder_steps=2))
        first = finetune(_config(stage1, tmp_path / "b", num_steps=3, freeze_encoder_steps=2))
        second = finetune(_config(stage1, tmp_path / "b", num_steps=6, freeze_encoder_steps=2))
    finally:
        torch.use_deterministic_algorithms(False)
    assert [h["total"] for h in straight] == [h["total"] for h in first + second]
    a, b = (read_checkpoint(list_checkpoints(tmp_path / x)[-1]) for x in "ab")
    assert a["step"] == b["step"] == 6
    assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())


def test_checkpoint_carries_tokenizer_speakers_and_configs_and_averages(tmp_path, stage1) -> None:
    finetune(_config(stage1, tmp_path / "ft", num_steps=2))
    data = read_checkpoint(list_checkpoints(tmp_path / "ft")[-1])
    assert data["kind"] == "finetune" and data["speakers"] == ["spk0", "spk1", "spk2"]
    assert Tokenizer.from_bytes(data["tokenizer"]).to_bytes() == Tokenizer.load(stage1["tokenizer"]).to_bytes()
    assert AsrConfig.from_dict(data["asr_config"]).vocab_size == Tokenizer.load(stage1["tokenizer"]).vocab_size
    assert FinetuneConfig.from_dict(data["train_config"]).asr == TINY_ASR
    write_average(tmp_path / "ft", 2, tmp_path / "avg.pt")
    averaged = read_checkpoint(tmp_path / "avg.pt")
    assert averaged["kind"] == "finetune" and averaged["speakers"] == data["speakers"]
    assert "optimizer" not in averaged and averaged["tokenizer"] == data["tokenizer"]


def test_an_averaged_stage1_model_loads_as_init(tmp_path, stage1) -> None:
    write_average(Path(stage1["init"]).parent, 1, tmp_path / "avg.pt")
    history = finetune(_config(stage1, tmp_path / "ft", init=str(tmp_path / "avg.pt"), num_steps=1))
    assert len(history) == 1


def test_checkpoints_of_the_wrong_kind_are_refused_by_name(tmp_path, stage1) -> None:
    finetune(_config(stage1, tmp_path / "ft", num_steps=1))
    tuned = str(list_checkpoints(tmp_path / "ft")[-1])
    with pytest.raises(CheckpointError, match="must be a stage-1 KD") as error:
        finetune(_config(stage1, tmp_path / "ft2", init=tuned))
    assert tuned in str(error.value) and "stage-2 fine-tuned" in str(error.value)
    with pytest.raises(CheckpointError, match="to resume stage-2 fine-tuning"):  # a stage-1 exp_dir
        finetune(_config(stage1, Path(stage1["init"]).parent, num_steps=9))
    foreign = tmp_path / "whisper.pt"
    torch.save({"dims": {}, "model_state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="must have format"):
        finetune(_config(stage1, tmp_path / "ft3", init=str(foreign)))
    result = CliRunner().invoke(main, ["train", "kd", "--cuts", stage1["manifest"], "--store", stage1["store"],
                                       "--exp-dir", str(tmp_path / "ft"), "--student", "tiny", "--num-steps", "3"])
    assert result.exit_code == 1 and "to resume stage-1 KD" in result.output


def test_from_scratch_without_store_or_tokenizer_trains_tagging_and_speaker(tmp_path, stage1) -> None:
    history = finetune(_config(stage1, tmp_path / "ft", init="", stores=(), tokenizer="", student="tiny",
                               num_steps=2, speaker_loss="aam"))
    assert set(history[0]) == {"tagging", "speaker", "total", "grad_norm", "lr", "encoder_lr"}


def test_kd_terms_are_stage1_targets_on_the_students_own_heads(tmp_path, stage1) -> None:
    history = finetune(_config(stage1, tmp_path / "ft", num_steps=1, whisper_weight=0.5, ecapa_weight=0.0))
    assert {"whisper", "beats"} <= set(history[0]) and "ecapa" not in set(history[0])
    parts = 0.5 * history[0]["whisper"] + history[0]["beats"] + history[0]["asr"] + history[0]["tagging"]
    assert history[0]["total"] == pytest.approx(parts + history[0]["speaker"], rel=1e-5)


def test_cli_runs_finetune_with_nested_asr_flags(tmp_path, stage1) -> None:
    args = ["train", "finetune", "--cuts", stage1["manifest"], "--init", stage1["init"], "--tokenizer",
            stage1["tokenizer"], "--asr-decoder-dim", "8", "--asr-joiner-dim", "8", "--no-asr-use-ctc",
            "--exp-dir", str(tmp_path / "ft"), "--num-steps", "1", "--max-duration", "3", "--num-buckets", "2",
            "--num-workers", "0", "--device", "cpu", "--freeze-encoder-steps", "0"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    data = read_checkpoint(list_checkpoints(tmp_path / "ft")[-1])
    assert data["asr_config"]["joiner_dim"] == 8 and data["asr_config"]["use_ctc"] is False
    assert not any(k.startswith("asr.ctc_head") for k in data["model"])


@pytest.mark.slow
def test_torchrun_two_gloo_ranks_finetune_across_the_unfreezing(tmp_path, stage1) -> None:
    import os
    import subprocess
    import sys

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "mt2kd", "train", "finetune", "--cuts", stage1["manifest"], "--store", stage1["store"],
               "--init", stage1["init"], "--tokenizer", stage1["tokenizer"], "--asr-decoder-dim", "8",
               "--asr-joiner-dim", "8", "--exp-dir", str(tmp_path / "ft"), "--max-duration", "1.5",
               "--num-buckets", "2", "--buffer-size", "100", "--num-workers", "0", "--num-steps", "4",
               "--freeze-encoder-steps", "2", "--checkpoint-every", "2", "--log-every", "2", "--device", "cpu"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    first, last = (read_checkpoint(p) for p in list_checkpoints(tmp_path / "ft"))
    assert last["sampler"]["world_size"] == 2 and len(last["rng"]) == 2
    init = read_checkpoint(stage1["init"])["model"]
    upper = [k for k in init if k.startswith("blocks.3.")]
    assert all(torch.equal(init[k], first["model"][f"student.{k}"]) for k in upper)  # frozen for 2 steps
    assert any(not torch.equal(init[k], last["model"][f"student.{k}"]) for k in upper)  # then trained
    assert torch.equal(init["heads.whisper.linear.weight"], last["model"]["student.heads.whisper.linear.weight"])


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # 2 workers on a 2-core box
def test_alternate_batches_take_one_corpus_in_turn_and_resume_exactly(tmp_path, stage1, make_cuts) -> None:
    second = make_cuts("ev", [0.7, 0.9, 1.1, 1.3], seed=1)
    for cut in second:  # a tagging-only corpus: events, no transcript, no speaker
        cut.supervisions = []
    manifest = tmp_path / "events.jsonl.gz"
    second.to_file(manifest)
    cuts = (stage1["manifest"], str(manifest))
    fields = dict(cuts=cuts, stores=(), batches="alternate", num_workers=2, max_duration=2.0)
    torch.use_deterministic_algorithms(True)
    try:
        straight = finetune(_config(stage1, tmp_path / "a", num_steps=6, **fields))
        first = finetune(_config(stage1, tmp_path / "b", num_steps=3, **fields))
        second_half = finetune(_config(stage1, tmp_path / "b", num_steps=6, **fields))
    finally:
        torch.use_deterministic_algorithms(False)
    assert [h["total"] for h in straight] == [h["total"] for h in first + second_half]
    # one corpus per batch in turn: speech batches carry an ASR loss, event batches none
    assert [h["asr"] > 0 for h in straight[:4]] == [True, False, True, False]
    order = read_checkpoint(list_checkpoints(tmp_path / "a")[-1])["sampler"]["order"]
    assert order[:4] == [0, 1, 0, 1]
