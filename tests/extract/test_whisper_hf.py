"""The whisper teacher on a Hugging Face Whisper folder, against the transformers encoder (test-only import)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mt2kd.errors import CheckpointError
from mt2kd.extract import load_teacher
from mt2kd.extract._whisper_hf import encoder_key

transformers = pytest.importorskip("transformers")  # a test-only dependency (the dev extra); never at run time

HF_TOL = 1e-4  # two implementations of the same float32 arithmetic (attention scaled in another order)


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A random WhisperForConditionalGeneration and the folder save_pretrained wrote of it."""
    config = transformers.WhisperConfig(
        vocab_size=128, num_mel_bins=80, d_model=64, encoder_layers=2, encoder_attention_heads=4,
        decoder_layers=1, decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256,
        max_source_positions=1500, max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=1)
    torch.manual_seed(0)
    model = transformers.WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():  # no LayerNorm at identity, positions not sinusoids: every tensor must be read
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    folder = tmp_path_factory.mktemp("hf") / "whisper-hf"
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module")
def hf_folder(hf_model: tuple[Path, Any]) -> Path:
    return hf_model[0]


def hf_states(model: Any, wave: np.ndarray) -> tuple[torch.Tensor, ...]:
    """transformers' own encoder on whisper's padded 30 s log-mel: every hidden state, [1500, D] each."""
    import whisper

    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(wave)), 80)[None]
    with torch.no_grad():
        out = model.model.encoder(mel, output_hidden_states=True)
    return tuple(h[0] for h in out.hidden_states)


def test_folder_holds_the_real_format(hf_folder: Path) -> None:
    assert (hf_folder / "config.json").is_file() and (hf_folder / "model.safetensors").is_file()


@pytest.mark.parametrize("layer", [-1, 0])
def test_pad30_equals_the_transformers_encoder(hf_model: tuple[Path, Any], layer: int) -> None:
    hf_folder, model = hf_model
    wave = (0.3 * np.random.default_rng(1).standard_normal(37_000)).astype(np.float32)
    teacher = load_teacher("whisper", hf_folder, mode="pad30", layer=layer)
    got = teacher.extract([wave])[0]
    states = hf_states(model, wave)
    want = states[-1] if layer == -1 else states[layer + 1]  # hidden_states[0] is the input to block 0
    n = got.shape[0]
    expected = want[: 2 * n].reshape(n, -1).numpy()
    assert float(np.abs(got - expected).max()) < HF_TOL
    assert teacher.spec.config["dims"]["n_audio_state"] == 64


def test_trim_mode_and_batches_work_on_a_hf_folder(hf_folder: Path) -> None:
    teacher = load_teacher("whisper", hf_folder)
    waves = [(0.3 * np.random.default_rng(s).standard_normal(n)).astype(np.float32) for s, n in ((2, 9000),
                                                                                              (3, 40_000))]
    alone = teacher.extract(waves[:1])[0]
    assert np.abs(teacher.extract(waves)[0] - alone).max() < 1e-5


def test_every_encoder_tensor_has_a_name_and_the_decoder_is_not_read(hf_folder: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(hf_folder / "model.safetensors"), framework="pt") as f:
        names = list(f.keys())
    mapped = {n: encoder_key(n) for n in names}
    assert not [n for n, k in mapped.items() if k is not None and k.startswith("unknown:")]
    assert all(k is None for n, k in mapped.items() if ".decoder." in n or n.startswith("proj_out"))


def test_a_folder_without_weights_or_of_another_model_is_refused(hf_folder: Path, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.json").write_text((hf_folder / "config.json").read_text())
    with pytest.raises(CheckpointError, match="must hold model.safetensors beside config.json"):
        load_teacher("whisper", tmp_path / "a")
    (tmp_path / "a" / "model.safetensors").write_bytes((hf_folder / "model.safetensors").read_bytes())
    (tmp_path / "a" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(CheckpointError, match="model_type must be 'whisper', got 'bert'"):
        load_teacher("whisper", tmp_path / "a")
