"""MVQ codes stores: quantise a store's frames, decode them back, refuse altered quantisers, resume."""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mt2kd.errors import ConfigError, FingerprintMismatchError, StoreFormatError, ValidationError
from mt2kd.store import QuantizeConfig, Quantizer, TeacherSpec, TeacherStore, codes_teachers, load_quantizer, quantize
from mt2kd.store._cli import store as store_cli

DIM = 12  # frame dimension of the synthetic teacher
RANK = 4  # the frames lie near a 4-D subspace: a few codebooks capture most of them


def _frames(rng: np.random.Generator, num_frames: int, basis: np.ndarray) -> np.ndarray:
    return (rng.standard_normal((num_frames, RANK)) @ basis + 0.05 * rng.standard_normal((num_frames, DIM))
            ).astype(np.float32)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Two shards of whisper-like frames (float16) and a beats-like clip teacher, with recorded failures."""
    url = str(tmp_path_factory.mktemp("quantize") / "source.zarr")
    rng = np.random.default_rng(3)
    basis = rng.standard_normal((RANK, DIM)).astype(np.float32)
    specs = [TeacherSpec("whisper", "frames", DIM, frame_rate=25.0, fingerprint="f" * 16),
             TeacherSpec("beats", "clip", 3)]
    ts = TeacherStore.create(url, specs, attrs={"plan": {"num_shards": 2}})
    for shard in range(2):
        with ts.shard_writer(shard) as writer:
            for i in range(12):
                writer.put(f"cut-{shard}-{i}", {"whisper": _frames(rng, int(rng.integers(20, 60)), basis),
                                                "beats": np.zeros(3, np.float32)})
            writer.put(f"beats-only-{shard}", {"beats": np.ones(3, np.float32)})
            writer.record_failure(f"beats-only-{shard}", "decoder crashed", teacher="whisper")
            writer.record_failure(f"gone-{shard}", "missing audio file: x.flac")
    return url


def _config(source: str, out: Path, **changes: object) -> QuantizeConfig:
    small = dict(num_codebooks=4, train_frames=600, heldout_frames=100, iters=6, batch_frames=64, refine_iters=2)
    return QuantizeConfig(source=source, out=str(out), **{**small, **changes})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def codes(source: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("codes") / "codes.zarr"
    summary = quantize(_config(source, out), echo=lambda text: None)
    assert summary.trained and summary.num_shards_written == 2
    return str(out)


def test_codes_store_holds_every_cut_as_uint8_codes_and_verifies(source: str, codes: str) -> None:
    src, out = TeacherStore.open(source), TeacherStore.open(codes)
    spec = out.specs["whisper_mvq"]
    assert (spec.kind, spec.dim, spec.dtype, spec.frame_rate) == ("frames", 4, "uint8", 25.0)
    assert codes_teachers(out) == ["whisper_mvq"]
    assert sorted(out.shards) == sorted(src.shards)
    for name, record in src.shards.items():  # same shards, same cuts with frames, in the same order
        assert out.shards[name].cut_ids == [c for c in record.cut_ids if src.num_frames(c, "whisper")]
    for cut_id in out.cut_ids():
        assert out.get(cut_id)["whisper_mvq"].shape == (src.num_frames(cut_id, "whisper"), 4)
        assert out.get(cut_id)["whisper_mvq"].dtype == np.uint8
    failed = {(f["cut_id"], f["teacher"]): f["reason"] for f in out.failures()}
    assert failed[("beats-only-0", "whisper_mvq")] == "decoder crashed"
    assert failed[("gone-1", None)] == "missing audio file: x.flac"
    assert out.verify(complete=True) == []


def test_decoded_codes_give_the_error_the_package_reports(source: str, codes: str) -> None:
    src, out = TeacherStore.open(source), TeacherStore.open(codes)
    quantizer = load_quantizer(out, "whisper_mvq")
    cut_ids = out.cut_ids()
    frames = np.concatenate([src.get(c)["whisper"].astype(np.float32) for c in cut_ids])
    stored = np.concatenate([out.get(c)["whisper_mvq"] for c in cut_ids])
    package = quantizer.to_package()
    import torch

    with torch.no_grad():
        reported = float(package.compute_loss(torch.from_numpy(frames), quantizer.config.refine_iters)[0])
        decoded = package.decode(torch.from_numpy(stored.astype(np.int64))).numpy()
    decoded_error = quantizer.relative_error(frames, stored)
    assert decoded_error == pytest.approx(reported, rel=1e-3)
    assert decoded_error < 0.9  # the quantiser explains part of the frames (a trivial one would give about 1)
    np.testing.assert_allclose(quantizer.decode(stored), decoded, rtol=1e-5, atol=1e-5)
    assert 0 < quantizer.config.rel_error < 1.0  # the held-out error recorded at training


def test_quantizer_file_is_safetensors_and_loads_without_pickle(codes: str, monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    raw = (Path(codes) / "quantizers" / "whisper_mvq.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    assert set(json.loads(header["__metadata__"]["mt2kd_quantizer"])) >= {"dim", "num_codebooks", "rel_error"}

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the quantiser must load without unpickling anything")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    quantizer = load_quantizer(TeacherStore.open(codes), "whisper_mvq")
    assert quantizer.fingerprint == TeacherStore.open(codes).specs["whisper_mvq"].config["quantizer_fingerprint"]


def test_altered_quantizer_is_refused(codes: str, tmp_path: Path) -> None:
    copy = tmp_path / "codes.zarr"
    shutil.copytree(codes, copy)
    path = copy / "quantizers" / "whisper_mvq.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x40  # one bit of the last tensor
    path.write_bytes(bytes(raw))
    with pytest.raises(StoreFormatError, match="altered or damaged"):
        load_quantizer(TeacherStore.open(copy), "whisper_mvq")
    # a quantiser whose own checksum holds, but which is not the one the codes were made with
    original = Quantizer.load(bytes((Path(codes) / "quantizers" / "whisper_mvq.safetensors").read_bytes()), "q")
    other = Quantizer(dataclasses.replace(original.config, seed=99), original.tensors)
    path.write_bytes(other.to_bytes())
    with pytest.raises(StoreFormatError, match="must be the quantiser with fingerprint"):
        load_quantizer(TeacherStore.open(copy), "whisper_mvq")
    result = CliRunner().invoke(store_cli, ["show", str(copy), "cut-0-0"])
    assert result.exit_code == 1 and "must be the quantiser with fingerprint" in result.output


def test_rerun_resumes_without_training_and_writes_the_same_codes(source: str, codes: str, tmp_path: Path) -> None:
    copy = tmp_path / "codes.zarr"
    shutil.copytree(codes, copy)
    before = TeacherStore.open(copy)
    expected = {c: before.get(c)["whisper_mvq"] for c in before.cut_ids()}
    shutil.rmtree(copy / "commits" / "000001")  # as if the run had stopped before its second commit
    assert TeacherStore.open(copy).verify(complete=True)[0].kind == "incomplete"
    summary = quantize(_config(source, copy), echo=lambda text: None)
    assert (summary.trained, summary.num_shards_written) == (False, 1)
    for shard in ("000000", "000001"):  # both again, as two tasks on a LocalCluster
        shutil.rmtree(copy / "commits" / shard)
    summary = quantize(_config(source, copy, workers=2), echo=lambda text: None)
    assert (summary.trained, summary.num_shards_written) == (False, 2)
    after = TeacherStore.open(copy)
    assert after.verify(complete=True) == []
    assert sorted(after.cut_ids()) == sorted(expected)
    for cut_id, codes_before in expected.items():
        np.testing.assert_array_equal(after.get(cut_id)["whisper_mvq"], codes_before)
    with pytest.raises(FingerprintMismatchError, match="8 codebooks"):
        quantize(_config(source, copy, num_codebooks=8), echo=lambda text: None)


def test_cli_quantize_then_show_and_verify(source: str, tmp_path: Path) -> None:
    out = tmp_path / "cli.zarr"
    runner = CliRunner()
    result = runner.invoke(store_cli, ["quantize", source, "--out", str(out), "--num-codebooks", "2", "--iters",
                                       "4", "--train-frames", "300", "--heldout-frames", "50", "--batch-frames",
                                       "32", "--refine-iters", "1"])
    assert result.exit_code == 0, result.output
    assert "wrote 2 of 2 shards of whisper_mvq" in result.output
    shown = runner.invoke(store_cli, ["show", str(out), "cut-1-3"])
    assert shown.exit_code == 0, shown.output
    assert "Rel. error this cut" in shown.output and "Decoded" in shown.output
    assert runner.invoke(store_cli, ["verify", str(out)]).exit_code == 0
    plotted = runner.invoke(store_cli, ["plot", str(out), "cut-1-3", "-o", str(tmp_path / "c.png")])
    assert plotted.exit_code == 0 and (tmp_path / "c.png").stat().st_size > 0
    refused = runner.invoke(store_cli, ["quantize", source, "--out", str(tmp_path / "x"), "--teacher", "beats"])
    assert refused.exit_code == 1 and "float frames teacher" in refused.output


def test_codes_must_be_bytes(tmp_path: Path) -> None:
    spec = TeacherSpec("whisper_mvq", "frames", 2, frame_rate=25.0, dtype="uint8")
    ts = TeacherStore.create(str(tmp_path / "s.zarr"), [spec])
    with ts.shard_writer(0) as writer:
        with pytest.raises(ValidationError, match=r"codes must be integers in \[0, 255\]"):
            writer.put("a", {"whisper_mvq": np.array([[0, 256]])})
        with pytest.raises(ValidationError, match="Got dtype float32"):
            writer.put("a", {"whisper_mvq": np.zeros((1, 2), np.float32)})
        writer.put("a", {"whisper_mvq": np.array([[0, 255]])})
    assert ts.get("a")["whisper_mvq"].tolist() == [[0, 255]]
    with pytest.raises(ConfigError, match=r"num_codebooks must be one of \[1, 2, 4, 8, 16, 32\]"):
        QuantizeConfig("a", "b", num_codebooks=3)
