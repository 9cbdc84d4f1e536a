"""The trainer: KD losses fall, resume is exact, the CLI runs, checkpoints average and load."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mt2kd.train import TrainConfig, load_student
from mt2kd.train._checkpoint import list_checkpoints, read_checkpoint
from mt2kd.train._trainer import eden_factor, train

# Ratios final/initial measured over seeds 0-3 with this setup (60 steps, 6 cuts):
# whisper 0.25-0.26, beats 0.15, ecapa 0.04-0.05. The bounds leave about 2x headroom.
MAX_RATIO = {"whisper": 0.5, "beats": 0.35, "ecapa": 0.25}


def _config(corpus: dict, exp_dir: Path, **overrides) -> TrainConfig:
    fields = dict(
        cuts=(corpus["manifest"],), stores=(corpus["store"],), exp_dir=str(exp_dir), student="tiny",
        max_duration=3.0, num_buckets=2, buffer_size=100, num_workers=0, lr=3e-3, warmup_steps=10,
        lr_steps=1000.0, log_every=20, checkpoint_every=1000, keep_last=3,
    )
    fields.update(overrides)
    return TrainConfig(**fields)


def test_each_kd_loss_falls_even_with_a_cut_lacking_whisper(tmp_path, make_cuts, fill_store) -> None:
    cuts = make_cuts("utt", [0.6, 0.8, 1.0, 1.2, 1.4, 1.6])
    manifest = tmp_path / "cuts.jsonl.gz"
    cuts.to_file(manifest)
    store = fill_store(tmp_path / "t.zarr", cuts, missing={"whisper": {"utt-002"}})
    corpus = {"manifest": str(manifest), "store": str(store)}
    history = train(_config(corpus, tmp_path / "exp", num_steps=60, seed=0))
    assert len(history) == 60
    for name, bound in MAX_RATIO.items():
        initial = sum(h[name] for h in history[:3]) / 3
        final = sum(h[name] for h in history[-10:]) / 10
        assert initial > 0 and final <= bound * initial, (name, initial, final)
    assert list((tmp_path / "exp" / "tensorboard").iterdir())  # scalars were written


def test_resume_matches_a_straight_run(tmp_path, corpus, deterministic) -> None:
    num_steps = 16
    straight = train(_config(corpus, tmp_path / "a", num_steps=num_steps, checkpoint_every=num_steps // 2))
    first = train(_config(corpus, tmp_path / "b", num_steps=num_steps // 2))
    second = train(_config(corpus, tmp_path / "b", num_steps=num_steps))
    assert len(first) == len(second) == num_steps // 2
    assert [h["total"] for h in straight] == [h["total"] for h in first + second]
    a = read_checkpoint(list_checkpoints(tmp_path / "a")[-1])
    b = read_checkpoint(list_checkpoints(tmp_path / "b")[-1])
    assert a["step"] == b["step"] == num_steps
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["sampler"] == b["sampler"]


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # 2 workers on a 2-core box
def test_resume_with_prefetching_workers_matches_a_serial_run(tmp_path, corpus, deterministic) -> None:
    # workers prefetch batches the sampler has yielded but the trainer has not used: the checkpoint must not skip them
    straight = train(_config(corpus, tmp_path / "a", num_steps=10))
    first = train(_config(corpus, tmp_path / "b", num_steps=5, num_workers=2))
    second = train(_config(corpus, tmp_path / "b", num_steps=10, num_workers=2))
    assert [h["total"] for h in straight] == [h["total"] for h in first + second]


def test_checkpoint_holds_everything_needed(tmp_path, corpus, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="mt2kd.train._progress"):
        train(_config(corpus, tmp_path / "exp", num_steps=6, checkpoint_every=2, keep_last=2, log_every=3))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert len(lines) == 2 and lines[1].startswith("step 6/6 |")
    for part in ("whisper", "beats", "ecapa", "total", "audio h/s", "data-wait", "ETA"):
        assert part in lines[1]
    paths = list_checkpoints(tmp_path / "exp")
    assert [p.name for p in paths] == ["checkpoint-00000004.pt", "checkpoint-00000006.pt"]
    data = read_checkpoint(paths[-1])
    for key in ("student_config", "train_config", "step", "model", "optimizer", "scheduler", "sampler", "rng"):
        assert key in data
    assert TrainConfig.from_dict(data["train_config"]).num_steps == 6
    model, config = load_student(paths[-1])
    assert config.model_dim == 32 and sum(p.numel() for p in model.parameters()) < 1_000_000


def test_eden_schedule_warms_up_then_decays() -> None:
    factors = [eden_factor(s, 10, 100.0) for s in range(400)]
    assert factors[0] == pytest.approx(0.1, rel=0.01)
    assert max(factors) == factors[9] and all(b < a for a, b in zip(factors[9:], factors[10:]))
    assert factors[399] == pytest.approx(((399**2 + 100**2) / 100**2) ** -0.25)


def test_cli_config_file_flags_and_average(tmp_path, corpus) -> None:
    from mt2kd.cli import main

    config_file = tmp_path / "run.yaml"
    exp_dir = tmp_path / "exp"
    base = _config(corpus, exp_dir, num_steps=3, checkpoint_every=1, lr=1e-3)
    config_file.write_text(json.dumps(base.to_dict()))  # JSON is valid YAML
    runner = CliRunner()
    result = runner.invoke(main, ["train", "kd", "--config", str(config_file), "--num-steps", "4"])
    assert result.exit_code == 0, result.output
    saved = json.loads((exp_dir / "train_config.json").read_text())
    assert saved["num_steps"] == 4 and saved["lr"] == 1e-3  # flag beats file, file beats default
    out = tmp_path / "avg.pt"
    result = runner.invoke(main, ["train", "average", "--exp-dir", str(exp_dir), "--last", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    averaged, _ = load_student(out)
    parts = [read_checkpoint(p)["model"]["heads.beats.linear.bias"] for p in list_checkpoints(exp_dir)[-3:]]
    torch.testing.assert_close(averaged.state_dict()["heads.beats.linear.bias"], sum(parts) / 3)


@pytest.mark.gpu
def test_bf16_autocast_on_gpu_trains(tmp_path, corpus) -> None:
    history = train(_config(corpus, tmp_path / "exp", num_steps=20, device="cuda", bf16=True))
    assert all(torch.isfinite(torch.tensor(h["total"])) for h in history)
    assert history[-1]["total"] < history[0]["total"]
    model, _ = load_student(list_checkpoints(tmp_path / "exp")[-1])
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast leaves weights in fp32


def test_cli_rejects_a_bad_value_with_a_usage_error(tmp_path, corpus) -> None:
    from mt2kd.cli import main

    args = ["train", "kd", "--cuts", corpus["manifest"], "--store", corpus["store"], "--exp-dir", str(tmp_path)]
    result = CliRunner().invoke(main, [*args, "--student", "huge"])
    assert result.exit_code == 2
    assert "student must be one of ['paper', 'tiny', 'zipformer-m', 'zipformer-tiny']. Got 'huge'." in result.output
    assert not list(tmp_path.glob("checkpoint-*.pt"))


def test_head_sizes_follow_the_store(tmp_path, make_cuts, fill_store) -> None:
    cuts = make_cuts("utt", [0.6, 0.8, 1.0, 1.2])
    manifest = tmp_path / "cuts.jsonl.gz"
    cuts.to_file(manifest)
    store = fill_store(tmp_path / "t.zarr", cuts, whisper_dim=48)  # a smaller whisper than large-v3
    corpus = {"manifest": str(manifest), "store": str(store)}
    history = train(_config(corpus, tmp_path / "exp", num_steps=2))
    model, config = load_student(list_checkpoints(tmp_path / "exp")[-1])
    assert config.teacher_frame_dim == 48 and model.heads["whisper"].linear.out_features == 48
    assert history[-1]["whisper"] > 0


@pytest.fixture
def dropout_student(monkeypatch):
    """The tiny preset with dropout on, as the paper preset has it (the plain tiny preset draws no masks)."""
    import dataclasses

    from mt2kd.train import _config

    monkeypatch.setitem(_config.STUDENT_PRESETS, "tiny", dataclasses.replace(_config.STUDENT_PRESETS["tiny"],
                                                                            dropout=0.1))


def test_resume_with_dropout_matches_a_straight_run(tmp_path, corpus, deterministic, dropout_student) -> None:
    # starting a DataLoader iterator drew from the global RNG, so a resumed run's masks were one draw off
    straight = train(_config(corpus, tmp_path / "a", num_steps=12))
    first = train(_config(corpus, tmp_path / "b", num_steps=6))
    second = train(_config(corpus, tmp_path / "b", num_steps=12))
    assert [h["total"] for h in straight] == [h["total"] for h in first + second]


def test_resume_applies_a_changed_lr_and_weight_decay(tmp_path, corpus, caplog) -> None:
    exp = tmp_path / "exp"
    train(_config(corpus, exp, num_steps=4, lr=3e-3, weight_decay=0.01))
    with caplog.at_level(logging.INFO, logger="mt2kd.train"):
        history = train(_config(corpus, exp, num_steps=6, lr=1e-4, weight_decay=0.5))
    # step 5 trains at lr * eden_factor(4): the old 3e-3 would give 30x these values
    assert [h["lr"] for h in history] == pytest.approx([1e-4 * eden_factor(s, 10, 1000.0) for s in (5, 6)])
    group = read_checkpoint(list_checkpoints(exp)[-1])["optimizer"]["param_groups"][0]
    assert group["weight_decay"] == 0.5 and group["initial_lr"] == 1e-4
    assert "lr (0.003 -> 0.0001)" in caplog.text and "weight_decay (0.01 -> 0.5)" in caplog.text
    assert "not an exact resume" not in caplog.text


def test_resume_with_changed_batching_restarts_the_sampler_and_says_so(tmp_path, corpus, caplog) -> None:
    exp = tmp_path / "exp"
    train(_config(corpus, exp, num_steps=2))
    epoch = read_checkpoint(list_checkpoints(exp)[-1])["sampler"]["epoch"]
    with caplog.at_level(logging.WARNING, logger="mt2kd.train"):
        history = train(_config(corpus, exp, num_steps=4, max_duration=2.0))
    assert len(history) == 2
    assert "max_duration (3.0 -> 2.0)" in caplog.text and "not an exact resume" in caplog.text
    sampler = read_checkpoint(list_checkpoints(exp)[-1])["sampler"]
    assert sampler["max_duration"] == 2.0 and sampler["epoch"] >= epoch + 1


@pytest.mark.parametrize(("field", "value", "message"), [
    ("grad_clip", 0.0, "grad_clip must be > 0"),
    ("grad_clip", -1.0, "grad_clip must be > 0"),
    ("weight_decay", -0.1, "weight_decay must be >= 0"),
    ("num_buckets", 0, "num_buckets must be > 0"),
    ("beats_weight", -1.0, "beats_weight must be >= 0"),
])
def test_config_refuses_values_that_would_train_wrongly(field, value, message) -> None:
    from mt2kd.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        TrainConfig(**{field: value})


def test_config_file_reads_yaml_exponents_and_refuses_wrong_types(tmp_path) -> None:
    from mt2kd.errors import ConfigError

    path = tmp_path / "run.yaml"
    path.write_text("lr: 1e-4\nweight_decay: 1e-2\nnum_steps: 2e3\nlr_steps: 7.5e3\n"  # YAML 1.1: strings
                    "log_every: 5.0e+1\n")  # and a float, for an integer field
    cfg = TrainConfig.from_file(path)
    assert (cfg.lr, cfg.weight_decay, cfg.num_steps, cfg.lr_steps, cfg.log_every) == (1e-4, 1e-2, 2000, 7500.0, 50)
    assert isinstance(cfg.num_steps, int) and isinstance(cfg.log_every, int)
    path.write_text("num_steps: 2.5e+0\n")
    with pytest.raises(ConfigError, match="num_steps must be an integer. Got 2.5"):
        TrainConfig.from_file(path)
    path.write_text('{"shuffle": "false"}')
    with pytest.raises(ConfigError, match="shuffle must be true or false. Got 'false'"):
        TrainConfig.from_file(path)
    path.write_text("lr: [1, 2\n")
    with pytest.raises(ConfigError, match="must be valid YAML"):
        TrainConfig.from_file(path)


@pytest.mark.parametrize("durations", [[0.6, 0.8, 1.0], [0.6, 0.8], [0.9]])
def test_default_num_buckets_trains_a_corpus_of_fewer_cuts(tmp_path, make_cuts, fill_store, caplog, durations) -> None:
    cuts = make_cuts("utt", durations)
    manifest = tmp_path / "cuts.jsonl.gz"
    cuts.to_file(manifest)
    corpus = {"manifest": str(manifest), "store": str(fill_store(tmp_path / "t.zarr", cuts))}
    with caplog.at_level(logging.INFO, logger="mt2kd.train._loader"):
        history = train(_config(corpus, tmp_path / "exp", num_steps=2, num_buckets=30))
    assert len(history) == 2
    assert f"num_buckets=30 is more than the {len(durations)} cuts" in caplog.text


def test_unreadable_audio_is_dropped_with_a_warning_and_resume_stays_exact(
        tmp_path, make_cuts, fill_store, caplog, deterministic) -> None:
    # any two cuts exceed max_duration, so each batch holds one cut and the broken one leaves its batch empty
    cuts = make_cuts("utt", [0.6, 0.8, 1.0, 0.9])
    manifest = tmp_path / "cuts.jsonl.gz"
    cuts.to_file(manifest)
    corpus = {"manifest": str(manifest), "store": str(fill_store(tmp_path / "t.zarr", cuts))}
    Path(cuts["utt-001"].recording.sources[0].source).unlink()
    with caplog.at_level(logging.INFO, logger="mt2kd.train"):
        straight = train(_config(corpus, tmp_path / "a", num_steps=8, max_duration=1.0, log_every=4))
    assert len(straight) == 8
    assert "cut utt-001: its audio cannot be read" in caplog.text and "utt-001.wav" in caplog.text
    assert "cuts dropped (unreadable audio)" in caplog.text
    # every split point: whether the skipped batch falls before or after the checkpoint within its epoch,
    # the saved sampler position must count it
    for split in range(1, 8):
        first = train(_config(corpus, tmp_path / f"b{split}", num_steps=split, max_duration=1.0))
        second = train(_config(corpus, tmp_path / f"b{split}", num_steps=8, max_duration=1.0))
        assert [h["total"] for h in straight] == [h["total"] for h in first + second], split


def test_an_epoch_without_readable_audio_stops_the_run(tmp_path, make_cuts, fill_store) -> None:
    from mt2kd.errors import ConfigError

    cuts = make_cuts("utt", [0.6, 0.8])
    manifest = tmp_path / "cuts.jsonl.gz"
    cuts.to_file(manifest)
    corpus = {"manifest": str(manifest), "store": str(fill_store(tmp_path / "t.zarr", cuts))}
    for cut in cuts:
        Path(cut.recording.sources[0].source).unlink()
    with pytest.raises(ConfigError, match="at least one cut's audio must be readable"):
        train(_config(corpus, tmp_path / "exp", num_steps=2))
