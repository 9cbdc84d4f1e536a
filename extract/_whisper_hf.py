"""Whisper's encoder from a Hugging Face folder (``config.json`` + safetensors), without transformers.

Hugging Face keeps Whisper (the released sizes and the many distilled and
fine-tuned variants) as ``WhisperForConditionalGeneration`` / ``WhisperModel``
weights under its own names. The encoder's tensors are the same tensors
under other names, so they are renamed onto openai-whisper's
``AudioEncoder`` and run by the same encoder loop as a ``.pt`` checkpoint:

| Hugging Face (``model.`` prefix optional) | openai-whisper |
|---|---|
| ``encoder.conv1``, ``encoder.conv2`` | ``conv1``, ``conv2`` |
| ``encoder.embed_positions.weight`` | ``positional_embedding`` |
| ``encoder.layers.N.self_attn.{q,k,v,out}_proj`` | ``blocks.N.attn.{query,key,value,out}`` |
| ``encoder.layers.N.self_attn_layer_norm`` | ``blocks.N.attn_ln`` |
| ``encoder.layers.N.fc1``, ``fc2`` | ``blocks.N.mlp.0``, ``blocks.N.mlp.2`` |
| ``encoder.layers.N.final_layer_norm`` | ``blocks.N.mlp_ln`` |
| ``encoder.layer_norm`` | ``ln_post`` |

Hugging Face scales the query by ``head_dim ** -0.5`` where openai-whisper
scales query and key by ``head_dim ** -0.25`` each: the same product.
Only the encoder's tensors are read from the file (safetensors reads by name).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from mt2kd.errors import CheckpointError

WEIGHT_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
RANDOM_INIT_KEY = "mt2kd_random_init"  # config.json key marking random test weights
_RENAMES = (  # (Hugging Face pattern, openai-whisper replacement), applied after the "encoder." prefix
    (r"^conv([12])\.", r"conv\1."),
    (r"^embed_positions\.weight$", "positional_embedding"),
    (r"^layers\.(\d+)\.self_attn\.q_proj\.", r"blocks.\1.attn.query."),
    (r"^layers\.(\d+)\.self_attn\.k_proj\.", r"blocks.\1.attn.key."),
    (r"^layers\.(\d+)\.self_attn\.v_proj\.", r"blocks.\1.attn.value."),
    (r"^layers\.(\d+)\.self_attn\.out_proj\.", r"blocks.\1.attn.out."),
    (r"^layers\.(\d+)\.self_attn_layer_norm\.", r"blocks.\1.attn_ln."),
    (r"^layers\.(\d+)\.fc1\.", r"blocks.\1.mlp.0."),
    (r"^layers\.(\d+)\.fc2\.", r"blocks.\1.mlp.2."),
    (r"^layers\.(\d+)\.final_layer_norm\.", r"blocks.\1.mlp_ln."),
    (r"^layer_norm\.", "ln_post."),
)


def is_hf_folder(path: Path) -> bool:
    """Whether ``path`` is a folder holding a Hugging Face config (what this module reads)."""
    return path.is_dir() and (path / CONFIG_FILE).is_file()


def hf_dims(config: dict[str, Any]) -> dict[str, int]:
    """openai-whisper's ``ModelDimensions`` fields from a Hugging Face ``WhisperConfig``."""
    return {
        "n_mels": int(config["num_mel_bins"]), "n_audio_ctx": int(config["max_source_positions"]),
        "n_audio_state": int(config["d_model"]), "n_audio_head": int(config["encoder_attention_heads"]),
        "n_audio_layer": int(config["encoder_layers"]), "n_vocab": int(config["vocab_size"]),
        "n_text_ctx": int(config["max_target_positions"]), "n_text_state": int(config["d_model"]),
        "n_text_head": int(config["decoder_attention_heads"]), "n_text_layer": int(config["decoder_layers"]),
    }


def encoder_key(hf_key: str) -> str | None:
    """The openai-whisper ``AudioEncoder`` name of a Hugging Face tensor, None for a tensor outside the encoder."""
    key = hf_key.removeprefix("model.")
    if not key.startswith("encoder."):
        return None
    key = key.removeprefix("encoder.")
    for pattern, replacement in _RENAMES:
        renamed, count = re.subn(pattern, replacement, key)
        if count:
            return renamed
    return f"unknown:{key}"  # an encoder tensor with no place here: refused by the strict load


def load_hf_encoder(folder: Path) -> tuple[torch.nn.Module, dict[str, int], bool]:
    """(float32 ``AudioEncoder`` on CPU, dims, random-init flag) of a Hugging Face Whisper folder."""
    import whisper.model
    from safetensors import safe_open

    weights = folder / WEIGHT_FILE
    if not weights.is_file():
        raise CheckpointError(f"whisper checkpoint folder {str(folder)!r} must hold {WEIGHT_FILE} beside "
                              f"{CONFIG_FILE} (a Hugging Face Whisper folder). Got "
                              f"{sorted(p.name for p in folder.iterdir())[:8]}.")
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        if config.get("model_type") != "whisper":
            raise ValueError(f"model_type must be 'whisper', got {config.get('model_type')!r}")
        dims = whisper.model.ModelDimensions(**hf_dims(config))
        state: dict[str, torch.Tensor] = {}
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            for name in f.keys():
                key = encoder_key(name)
                if key is not None:
                    state[key] = f.get_tensor(name).to(torch.float32)
        encoder = whisper.model.AudioEncoder(dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head,
                                             dims.n_audio_layer)
        encoder.load_state_dict(state, strict=True, assign=True)
    except Exception as e:  # json, the config's fields, safetensors and load_state_dict raise many types
        raise CheckpointError(f"whisper checkpoint folder {str(folder)!r} must be a Hugging Face Whisper model "
                              f"({CONFIG_FILE} of model_type 'whisper' and the encoder's tensors in {WEIGHT_FILE}). "
                              f"Got {type(e).__name__}: {' '.join(str(e).split())[:600]}") from e
    return encoder.eval().requires_grad_(False), dict(dims.__dict__), bool(config.get(RANDOM_INIT_KEY, False))


__all__ = ["encoder_key", "hf_dims", "is_hf_folder", "load_hf_encoder"]
