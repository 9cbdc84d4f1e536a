"""What a user sees when training meets a mistake: one line naming the cause, no traceback, no leftovers."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from mt2kd.cli import main


def _kd(corpus: dict, exp_dir: Path, *extra: str, cuts: str | None = None, store: str | None = None) -> list[str]:
    return ["train", "kd", "--cuts", cuts or corpus["manifest"], "--store", store or corpus["store"],
            "--exp-dir", str(exp_dir), "--student", "tiny", "--max-duration", "3", "--num-buckets", "2",
            "--num-workers", "0", *extra]


def _one_line_error(result, *parts: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.output.startswith("Error: "), result.output
    for part in parts:
        assert part in result.output, result.output


def test_missing_manifest_is_named_before_the_store_is_read(tmp_path, corpus) -> None:
    exp = tmp_path / "exp"
    result = CliRunner().invoke(main, _kd(corpus, exp, cuts=str(tmp_path / "nope.jsonl.gz")))
    _one_line_error(result, "--cuts must name an existing CutSet manifest", "nope.jsonl.gz")
    assert not exp.exists()


def test_missing_store_is_one_line_and_leaves_no_exp_dir(tmp_path, corpus) -> None:
    exp = tmp_path / "exp"
    result = CliRunner().invoke(main, _kd(corpus, exp, store=str(tmp_path / "nope.zarr")))
    _one_line_error(result, "nope.zarr")
    assert not exp.exists()


def test_store_of_other_cuts_is_one_line(tmp_path, corpus, make_cuts, fill_store) -> None:
    other = fill_store(tmp_path / "other.zarr", make_cuts("other", [0.6, 0.8]))
    exp = tmp_path / "exp"
    result = CliRunner().invoke(main, _kd(corpus, exp, store=str(other)))
    _one_line_error(result, "the stores must hold targets for the cuts")
    assert not exp.exists()


def test_two_stores_holding_the_same_cut_are_one_line(tmp_path, corpus, fill_store) -> None:
    twin = fill_store(tmp_path / "twin.zarr", corpus["cuts"])
    args = _kd(corpus, tmp_path / "exp", "--store", str(twin))
    _one_line_error(CliRunner().invoke(main, args), "utt-000")


def test_average_of_an_empty_exp_dir_is_one_line(tmp_path) -> None:
    args = ["train", "average", "--exp-dir", str(tmp_path), "--out", str(tmp_path / "avg.pt")]
    _one_line_error(CliRunner().invoke(main, args), "must hold checkpoint-*.pt files")


def test_resume_with_another_student_names_the_checkpoint_and_fields(tmp_path, corpus, monkeypatch) -> None:
    import dataclasses

    from mt2kd.train import _config

    exp = tmp_path / "exp"
    runner = CliRunner()
    result = runner.invoke(main, _kd(corpus, exp, "--num-steps", "1"))
    assert result.exit_code == 0, result.output
    wider = dataclasses.replace(_config.STUDENT_PRESETS["tiny"], model_dim=48, ffn_dim=96)
    monkeypatch.setitem(_config.STUDENT_PRESETS, "tiny", wider)
    result = runner.invoke(main, _kd(corpus, exp, "--num-steps", "2"))
    _one_line_error(result, "checkpoint-00000001.pt", "model_dim (32 there, 48 now)", "ffn_dim (64 there, 96 now)",
                    "new --exp-dir")
    monkeypatch.undo()
    result = runner.invoke(main, [*_kd(corpus, exp, "--num-steps", "2"), "--student", "paper"])
    _one_line_error(result, "student ('tiny' there, 'paper' now)", "model_dim (32 there, 512 now)")


def test_resume_with_nothing_left_to_train_says_so(tmp_path, corpus, caplog) -> None:
    import logging

    exp = tmp_path / "exp"
    runner = CliRunner()
    assert runner.invoke(main, _kd(corpus, exp, "--num-steps", "2")).exit_code == 0
    for num_steps in ("2", "1"):
        with caplog.at_level(logging.WARNING, logger="mt2kd.train"):
            result = runner.invoke(main, _kd(corpus, exp, "--num-steps", num_steps))
        assert result.exit_code == 0, result.output
        assert f"nothing left to train: checkpoint at step 2 >= num_steps {num_steps}" in caplog.text
        caplog.clear()


def _manifests(tmp_path: Path, corpus: dict) -> dict[str, Path]:
    """Manifests a user gets wrong: not gzipped under a .gz name, of recordings, of plain text."""
    import gzip

    from lhotse import RecordingSet

    plain = gzip.decompress(Path(corpus["manifest"]).read_bytes())
    wrong = {"notgz": tmp_path / "notgz.jsonl.gz", "recordings": tmp_path / "recordings.jsonl.gz",
             "text": tmp_path / "text.jsonl"}
    wrong["notgz"].write_bytes(plain)
    RecordingSet.from_recordings(c.recording for c in corpus["cuts"]).to_file(wrong["recordings"])
    wrong["text"].write_text("hello\n")
    return wrong


@pytest.mark.parametrize(("kind", "message"), [
    ("notgz", "is named .gz, so it must be gzip-compressed"),
    ("recordings", "must hold cuts. Got a Recording manifest"),
    ("text", "must be readable lhotse JSON(L). Got JSONDecodeError"),
])
def test_a_manifest_of_the_wrong_kind_is_named(tmp_path, corpus, kind, message) -> None:
    path = _manifests(tmp_path, corpus)[kind]
    result = CliRunner().invoke(main, _kd(corpus, tmp_path / "exp", cuts=str(path)))
    _one_line_error(result, message, str(path))


def test_device_cuda_without_a_gpu_is_one_line(tmp_path, corpus, monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = CliRunner().invoke(main, _kd(corpus, tmp_path / "exp", "--device", "cuda"))
    _one_line_error(result, "device 'cuda' must be a GPU this machine shows", "no CUDA device", "--device cpu")
    assert not (tmp_path / "exp").exists()


def test_training_on_random_teachers_warns_at_start(tmp_path, corpus, fill_store, caplog) -> None:
    import logging

    random = fill_store(tmp_path / "random.zarr", corpus["cuts"], attrs={"random_teachers": True})
    with caplog.at_level(logging.WARNING, logger="mt2kd.train"):
        result = CliRunner().invoke(main, _kd(corpus, tmp_path / "exp", "--num-steps", "1", store=str(random)))
    assert result.exit_code == 0, result.output
    assert f"random teacher weights in {random}" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mt2kd.train"):
        result = CliRunner().invoke(main, _kd(corpus, tmp_path / "exp2", "--num-steps", "1"))
    assert result.exit_code == 0 and "random teacher weights" not in caplog.text


def test_a_manifest_broken_after_its_first_line_is_named(tmp_path, corpus) -> None:
    import gzip

    lines = gzip.decompress(Path(corpus["manifest"]).read_bytes()).decode().splitlines()
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    result = CliRunner().invoke(main, _kd(corpus, tmp_path / "exp", cuts=str(broken)))
    _one_line_error(result, "must be readable lhotse JSON(L)", str(broken))
