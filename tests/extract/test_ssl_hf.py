"""HuBERT / WavLM / wav2vec 2.0 teachers on Hugging Face folders, against transformers itself (test-only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mt2kd.extract import load_teacher

transformers = pytest.importorskip("transformers")  # a test-only dependency (the dev extra); never at run time

HF_TOL = 1e-4  # two implementations of the same float32 arithmetic
CONV = {"conv_dim": (32,) * 7, "conv_kernel": (10, 3, 3, 3, 3, 2, 2), "conv_stride": (5, 2, 2, 2, 2, 2, 2)}
SMALL = {"hidden_size": 48, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 96,
         "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4, **CONV}
MODELS = {  # teacher -> (transformers class, config class, config): base layout and large (stable) layout
    "hubert": ("HubertModel", "HubertConfig", {"feat_extract_norm": "group", "do_stable_layer_norm": False}),
    "wav2vec2": ("Wav2Vec2ForCTC", "Wav2Vec2Config", {"feat_extract_norm": "layer", "do_stable_layer_norm": True,
                                                      "conv_bias": True, "vocab_size": 12}),
    "wavlm": ("WavLMModel", "WavLMConfig", {"feat_extract_norm": "group", "do_stable_layer_norm": False,
                                            "num_buckets": 32, "max_bucket_distance": 64}),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def hf_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Any]:
    name = request.param
    model_class, config_class, extra = MODELS[name]
    config = getattr(transformers, config_class)(**SMALL, **extra)
    torch.manual_seed(1)
    model = getattr(transformers, model_class)(config).eval()
    with torch.no_grad():  # no norm at identity: every tensor must be read
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    folder = tmp_path_factory.mktemp("hf") / name
    model.save_pretrained(folder)
    return name, folder, model


def test_layers_equal_transformers_hidden_states(hf_model: tuple[str, Path, Any]) -> None:
    name, folder, model = hf_model
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    wave = (0.3 * np.random.default_rng(2).standard_normal(23_000)).astype(np.float32)
    teacher = load_teacher(name, folder, layers="0,1", rate=50, normalize=False)
    got = teacher.extract([wave])[0]
    base = getattr(model, "wav2vec2", model)  # the CTC head's base model
    with torch.no_grad():
        states = base(torch.from_numpy(wave)[None], output_hidden_states=True).hidden_states
    # hidden_states[0] is the transformer's input; [k + 1] the output of layer k (the last one of a
    # stable-layer-norm model is taken after its final LayerNorm, so layers 0 and 1 of 3 are compared)
    expected = torch.cat([states[1][0], states[2][0]], dim=1).numpy()
    assert got.shape == expected.shape
    assert float(np.abs(got - expected).max()) < HF_TOL
    assert teacher.spec.config["format"] == "huggingface"


def test_batch_of_a_hf_checkpoint_equals_alone(hf_model: tuple[str, Path, Any]) -> None:
    name, folder, _ = hf_model
    teacher = load_teacher(name, folder, layers="-1")
    waves = [(0.3 * np.random.default_rng(s).standard_normal(n)).astype(np.float32) for s, n in ((3, 12_000),
                                                                                              (4, 30_000))]
    assert float(np.abs(teacher.extract(waves)[0] - teacher.extract(waves[:1])[0]).max()) < 1e-5
