"""The whisper teacher against openai-whisper itself, on tiny random checkpoints.

Every checkpoint is written by ``write_tiny_whisper_checkpoint`` in the real
``.pt`` format; the references load it with ``whisper.load_model``, like a
release, and the teacher with its own encoder-only loader.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import torch

from mt2kd.cuts import SAMPLE_RATE
from mt2kd.errors import CheckpointError, CheckpointNotFoundError, ConfigError
from mt2kd.extract import load_teacher
from mt2kd.extract._frames import WINDOW_SAMPLES, num_encoder_frames, num_stacked_frames
from mt2kd.extract.whisper import WhisperOptions, WhisperTeacher, write_tiny_whisper_checkpoint

if TYPE_CHECKING:
    from whisper.model import Whisper

STATE = 64  # n_audio_state of the tiny checkpoints
NUM_LAYERS = 3  # encoder blocks of the tiny checkpoints


@pytest.fixture(scope="module", params=[80, 128], ids=["n_mels80", "n_mels128"])
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp(f"whisper{request.param}")
    return write_tiny_whisper_checkpoint(folder / "tiny.pt", n_mels=request.param, seed=request.param,
                                         n_audio_layer=NUM_LAYERS)


@pytest.fixture(scope="module")
def reference(checkpoint: Path) -> Whisper:
    import whisper

    return whisper.load_model(str(checkpoint), device="cpu").eval()


def audio(seconds: float, seed: int, extra_samples: int = 0) -> np.ndarray:
    """Speech-like test signal: noise with a slow loudness envelope (so the log-mel floor can bind)."""
    rng = np.random.default_rng(seed)
    num_samples = int(seconds * SAMPLE_RATE) + extra_samples
    envelope = np.abs(np.sin(np.arange(num_samples) / SAMPLE_RATE * 2.1 + seed)) ** 4
    return (0.3 * envelope * rng.standard_normal(num_samples)).astype(np.float32)


def stack(frames: np.ndarray, num_stack: int = 2) -> np.ndarray:
    num_frames = frames.shape[0] // num_stack
    return frames[: num_frames * num_stack].reshape(num_frames, -1)


def reference_frames(model: Whisper, x: np.ndarray, block: int | None = None) -> np.ndarray:
    """``embed_audio(log_mel_spectrogram(pad_or_trim(x)))[:, :n]`` stacked, or block ``block``'s raw output."""
    import whisper

    captured: list[torch.Tensor] = []
    hook = None
    if block is not None:
        hook = model.encoder.blocks[block].register_forward_hook(lambda m, i, out: captured.append(out))
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(x)), n_mels=model.dims.n_mels)
    with torch.no_grad():
        out = model.embed_audio(mel[None])
    if hook is not None:
        hook.remove()
        out = captured[0]
    return stack(out[0, : num_encoder_frames(len(x))].numpy())


def test_pad30_equals_whisper_embed_audio(checkpoint: Path, reference: Whisper) -> None:
    teacher = load_teacher("whisper", checkpoint, mode="pad30")
    for seconds, extra in [(7.0, 123), (2.5, 80), (0.5, 0)]:
        x = audio(seconds, seed=1, extra_samples=extra)
        got = teacher.extract([x])[0]
        want = reference_frames(reference, x)
        assert got.dtype == np.float32 and got.shape == (num_stacked_frames(len(x)), 2 * STATE)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["trim", "pad30"])
def test_cut_alone_equals_cut_in_batch(checkpoint: Path, mode: str) -> None:
    teacher = load_teacher("whisper", checkpoint, mode=mode)
    # 4.3 s + 170 samples has an odd number of mel frames: conv2 reads one frame past its end
    cut = audio(4.3, seed=2, extra_samples=170)
    longer, shorter = audio(11.0, seed=3), audio(1.7, seed=4)
    alone = teacher.extract([cut])[0]
    batch = teacher.extract([longer, cut, shorter])
    np.testing.assert_allclose(batch[1], alone, atol=1e-4, rtol=0)
    np.testing.assert_allclose(batch[2], teacher.extract([shorter])[0], atol=1e-4, rtol=0)


def test_trim_differs_from_pad30_on_short_cuts(checkpoint: Path) -> None:
    # the modes must really differ where padding matters, or the batch test above proves nothing
    x = audio(3.0, seed=5)
    trim = load_teacher("whisper", checkpoint, mode="trim").extract([x])[0]
    pad30 = load_teacher("whisper", checkpoint, mode="pad30").extract([x])[0]
    assert trim.shape == pad30.shape
    assert np.abs(trim - pad30).max() > 1e-2


def test_exactly_30s_is_the_same_in_both_modes(checkpoint: Path, reference: Whisper) -> None:
    x = audio(30.0, seed=6)
    trim = load_teacher("whisper", checkpoint, mode="trim").extract([x])[0]
    pad30 = load_teacher("whisper", checkpoint, mode="pad30").extract([x])[0]
    assert trim.shape == (750, 2 * STATE)
    np.testing.assert_allclose(trim, pad30, atol=1e-5, rtol=0)
    np.testing.assert_allclose(trim, reference_frames(reference, x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["trim", "pad30"])
def test_65s_cut_is_encoded_in_30s_windows(checkpoint: Path, mode: str) -> None:
    teacher = load_teacher("whisper", checkpoint, mode=mode)
    x = audio(65.0, seed=7, extra_samples=170)
    frames = teacher.extract([x])[0]
    assert frames.shape == (num_stacked_frames(len(x)), 2 * STATE)
    per_window = num_stacked_frames(WINDOW_SAMPLES)  # 750 stacked frames in one 30 s window
    first, tail = teacher.extract([x[:WINDOW_SAMPLES], x[2 * WINDOW_SAMPLES:]])
    np.testing.assert_allclose(frames[:per_window], first, atol=1e-4, rtol=0)
    np.testing.assert_allclose(frames[2 * per_window:], tail, atol=1e-4, rtol=0)


def test_a_tail_of_one_mel_frame_after_30s_adds_its_frame(checkpoint: Path) -> None:
    # 30 s + 170 samples: 3,001 mel frames, 1,501 at 50 Hz; the last comes from a 170-sample window
    x = audio(30.0, seed=17, extra_samples=170)
    teacher = load_teacher("whisper", checkpoint, stack=1)
    frames = teacher.extract([x])[0]
    assert frames.shape == (num_encoder_frames(len(x)), STATE) == (1501, STATE)
    np.testing.assert_allclose(frames[:1500], teacher.extract([x[:WINDOW_SAMPLES]])[0], atol=1e-4, rtol=0)
    assert np.all(np.isfinite(frames[1500]))


def test_stack_is_applied_after_joining_windows(checkpoint: Path) -> None:
    # 1,500 frames per window is not a multiple of 7: stacks must straddle window edges
    x = audio(31.0, seed=8, extra_samples=170)
    frames50 = load_teacher("whisper", checkpoint, stack=1).extract([x])[0]
    frames7 = load_teacher("whisper", checkpoint, stack=7).extract([x])[0]
    assert frames50.shape[0] == num_encoder_frames(len(x))
    assert frames7.shape == (num_stacked_frames(len(x), 7), 7 * STATE)
    np.testing.assert_array_equal(frames7, stack(frames50, 7))


@pytest.mark.parametrize("layer", list(range(NUM_LAYERS)))
def test_layer_k_is_the_raw_output_of_block_k(checkpoint: Path, reference: Whisper, layer: int) -> None:
    x = audio(5.0, seed=9)
    got = load_teacher("whisper", checkpoint, mode="pad30", layer=layer).extract([x])[0]
    np.testing.assert_allclose(got, reference_frames(reference, x, block=layer), atol=1e-5, rtol=0)
    with_ln_post = load_teacher("whisper", checkpoint, mode="pad30", layer=-1).extract([x])[0]
    assert np.abs(got - with_ln_post).max() > 1e-2  # ln_post applies to layer -1 only


def test_too_short_cuts_give_empty_arrays(checkpoint: Path) -> None:
    teacher = load_teacher("whisper", checkpoint)
    normal = audio(2.0, seed=10)
    outputs = teacher.extract([np.zeros(0, np.float32), normal, audio(0.0, 11, extra_samples=479),
                               audio(0.0, 12, extra_samples=480)])
    assert [o.shape for o in outputs] == [(0, 2 * STATE), (50, 2 * STATE), (0, 2 * STATE), (1, 2 * STATE)]
    np.testing.assert_allclose(outputs[1], teacher.extract([normal])[0], atol=1e-4, rtol=0)


def test_spec_records_options_and_dims(checkpoint: Path) -> None:
    teacher = load_teacher("whisper", checkpoint, layer=1, stack=3)
    spec = teacher.spec
    assert (spec.name, spec.kind, spec.dim, spec.dtype) == ("whisper", "frames", 3 * STATE, "float16")
    assert spec.frame_rate == pytest.approx(50 / 3)
    assert spec.config["layer"] == 1 and spec.config["mode"] == "trim" and spec.config["stack"] == 3
    assert spec.config["n_mels"] == spec.config["dims"]["n_mels"] and spec.config["random_init"] is True
    assert spec.fingerprint == teacher.fingerprint
    assert load_teacher("whisper", checkpoint, layer=0, stack=3).fingerprint != teacher.fingerprint
    half = load_teacher("whisper", checkpoint, layer=1, stack=3, precision="bf16")
    assert half.fingerprint != teacher.fingerprint and half.spec.config["precision"] == "bf16"


def test_bad_options_are_refused(checkpoint: Path) -> None:
    with pytest.raises(ConfigError, match="layer"):
        load_teacher("whisper", checkpoint, layer=NUM_LAYERS)
    with pytest.raises(ConfigError, match="mode"):
        load_teacher("whisper", checkpoint, mode="pad")
    with pytest.raises(ConfigError, match="stack"):
        WhisperOptions(stack=0)
    with pytest.raises(ConfigError, match="unknown"):
        WhisperOptions.from_dict({"layerz": 2})
    assert WhisperOptions.from_dict(WhisperOptions(layer=2).to_dict()) == WhisperOptions(layer=2)
    with pytest.raises(ConfigError, match="CUDA"):
        load_teacher("whisper", checkpoint, precision="bf16").extract([audio(1.0, seed=13)])
    with pytest.raises(ConfigError, match="layer or layers, not both"):
        WhisperOptions(layer=1, layers="0,1")
    with pytest.raises(ConfigError, match="distinct comma-separated block indices"):
        WhisperOptions(layers="1,1")
    with pytest.raises(ConfigError, match="layer must be -1 or in"):
        load_teacher("whisper", checkpoint, layers=f"0,{NUM_LAYERS}")


def test_missing_or_malformed_checkpoint_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "large-v3.pt"
    with pytest.raises(CheckpointNotFoundError, match="large-v3.pt"):
        load_teacher("whisper", missing)
    with pytest.raises(CheckpointNotFoundError, match="large-v3.pt"):
        WhisperTeacher(missing, {})
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pt.*dims"):
        load_teacher("whisper", garbage)
    wrong = tmp_path / "wrong.pt"
    torch.save({"model": {}}, wrong)
    with pytest.raises(CheckpointError, match="wrong.pt"):
        load_teacher("whisper", wrong)


def test_a_checkpoint_folder_is_refused_as_a_folder_naming_the_files_in_it(tmp_path: Path) -> None:
    folder = tmp_path / "whisper"
    folder.mkdir()
    (folder / "tiny.pt").write_bytes(b"")
    with pytest.raises(CheckpointError) as caught:
        load_teacher("whisper", folder)
    assert not isinstance(caught.value, CheckpointNotFoundError) and "does not exist" not in str(caught.value)
    assert f"Got '{folder}', which is a folder without config.json (it holds tiny.pt: pass one of those)" \
        in str(caught.value)


def test_the_encoder_loads_as_whisper_load_model_loads_it_from_any_release_format(checkpoint: Path,
                                                                                    tmp_path: Path) -> None:
    import whisper

    from mt2kd.extract._whisper_model import load_whisper

    saved = torch.load(checkpoint, weights_only=True)
    fp16 = {**saved, "model_state_dict": {k: v.half() for k, v in saved["model_state_dict"].items()}}
    torch.save(fp16, tmp_path / "fp16.pt")  # the releases hold float16 tensors
    torch.save(fp16, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)  # cannot be memory-mapped
    encoder_only = {**fp16, "model_state_dict": {k: v for k, v in fp16["model_state_dict"].items()
                                                 if k.startswith("encoder.")}}
    torch.save(encoder_only, tmp_path / "encoder_only.pt")  # the decoder is never read
    want = whisper.load_model(str(tmp_path / "fp16.pt"), device="cpu").encoder.state_dict()
    for name in ("fp16.pt", "legacy.pt", "encoder_only.pt"):
        encoder, dims, random_init = load_whisper(tmp_path / name)
        got = encoder.state_dict()
        assert list(got) == list(want) and dims == saved["dims"] and random_init
        assert not any(t.is_meta for t in [*encoder.parameters(), *encoder.buffers()])  # all filled in
        for key, value in got.items():
            assert value.dtype == torch.float32 and torch.equal(value, want[key]), (name, key)
    broken = {**saved, "model_state_dict": {k: v for k, v in saved["model_state_dict"].items()
                                            if k != "encoder.ln_post.weight"}}
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="broken.pt' must hold every encoder tensor.*encoder.ln_post.weight"):
        load_whisper(tmp_path / "broken.pt")


@pytest.mark.gpu
def test_bf16_on_cuda_is_close_to_fp32(checkpoint: Path) -> None:
    cuts = [audio(4.0, seed=14), audio(9.5, seed=15), audio(33.0, seed=16)]
    fp32 = load_teacher("whisper", checkpoint).to("cuda").extract(cuts)
    bf16 = load_teacher("whisper", checkpoint, precision="bf16").to("cuda").extract(cuts)
    for a, b in zip(fp32, bf16):
        assert a.shape == b.shape and b.dtype == np.float32
        assert np.abs(a - b).max() < 0.1 * np.abs(a).max()  # bf16 keeps about 3 significant digits


@pytest.mark.parametrize("mode", ["trim", "pad30"])
def test_several_layers_in_one_pass_equal_each_layer_alone(checkpoint: Path, mode: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from mt2kd.extract import _whisper_model

    layers = [2, 0, -1]
    cuts = [audio(3.0, seed=20), audio(31.5, seed=21), audio(1.2, seed=22)]
    teacher = load_teacher("whisper", checkpoint, mode=mode, layers="2,0,-1")
    blocks_run: list[int] = []
    run_block = _whisper_model._block

    def counted(*args: Any) -> Any:
        blocks_run.append(1)
        return run_block(*args)
    monkeypatch.setattr(_whisper_model, "_block", counted)
    together = teacher.extract(cuts)
    assert len(blocks_run) == NUM_LAYERS  # one pass over the blocks (one batch of windows), not one per layer
    monkeypatch.undo()
    for position, layer in enumerate(layers):
        alone = load_teacher("whisper", checkpoint, mode=mode, layer=layer).extract(cuts)
        for got, want in zip(together, alone):
            assert got.shape == (want.shape[0], len(layers) * want.shape[1])
            part = got.reshape(got.shape[0], 2, len(layers), STATE)[:, :, position].reshape(want.shape)
            np.testing.assert_array_equal(part, want)


def test_a_layer_axis_is_recorded_in_the_spec_and_one_layer_keeps_its_fingerprint(checkpoint: Path) -> None:
    several = load_teacher("whisper", checkpoint, layers="0,2")
    spec = several.spec
    assert spec.dim == 2 * 2 * STATE and spec.frame_rate == 25.0
    assert spec.config["layers"] == "0,2" and spec.config["resolved_layers"] == [0, 2]
    assert spec.config["frames_per_row"] == 2
    one = load_teacher("whisper", checkpoint, layer=2)
    assert "layers" not in one.options and "resolved_layers" not in one.spec.config
    assert load_teacher("whisper", checkpoint, layers="2,0").fingerprint != several.fingerprint
