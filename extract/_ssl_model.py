"""HuBERT, WavLM and wav2vec 2.0 on torchaudio's model code: the checkpoint formats, and a padding-exact forward.

Checkpoint formats (all local; nothing is downloaded):

- ``torchaudio``: a ``.pt`` file holding ``{"config": ..., "state_dict": ...}``,
  ``config`` the keyword arguments of ``torchaudio.models.wav2vec2_model``
  (or ``wavlm_model``, told apart by ``encoder_num_buckets``) and
  ``state_dict`` the built model's; optional ``normalize_waveform`` (bool).
  This is what ``mt2kd teachers make-tiny`` writes.
- ``torchaudio`` bare: the state dict alone, as torchaudio's pipeline
  bundles store it (``hubert_fairseq_base_ls960.pth``), with the option
  ``arch=HUBERT_BASE`` naming the ``torchaudio.pipelines`` bundle whose
  config (and waveform normalisation) it was trained with.
- ``huggingface``: a folder with ``config.json`` and ``model.safetensors``
  (or ``pytorch_model.bin``), as ``save_pretrained`` writes it for
  ``HubertModel``, ``Wav2Vec2Model``, ``WavLMModel`` and their ``ForCTC``
  heads (the head is left out). Its weights are renamed onto torchaudio's
  modules here; transformers is never imported.

The forward is torchaudio's ``extract_features`` made batch-invariant:

- models whose first convolution has a GroupNorm over time (the base
  sizes' ``group_norm`` front end) would let padding into every valid frame's
  statistics: their convolutional front end runs per cut, at its own length;
  the ``layer_norm`` front end (normalising each frame alone) runs batched;
- projected frames past a cut's end are zeroed before the positional
  convolution, which is what a lone cut's convolution padding reads there;
- every attention call gets a key-padding mask (WavLM's attention takes it
  as ``key_padding_mask``: torchaudio's own batched WavLM path refuses any mask).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mt2kd.errors import CheckpointError, CheckpointNotFoundError, ConfigError

RANDOM_INIT_KEY = "mt2kd_random_init"  # extra checkpoint key marking random test weights
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what save_pretrained writes, in preference order
HF_PREFIXES = ("hubert.", "wav2vec2.", "wavlm.")  # the base model's prefix inside ForCTC / pretraining checkpoints
HF_MODEL_TYPES = {"hubert": "hubert", "wav2vec2": "wav2vec2", "wavlm": "wavlm"}  # config.json model_type -> family


@dataclasses.dataclass
class SslModel:
    """A loaded SSL encoder and the facts about it that the teacher records."""

    model: torch.nn.Module  # torchaudio Wav2Vec2Model, eval mode, frozen, float32 on CPU
    config: dict[str, Any]  # the builder's keyword arguments
    family: str  # "wavlm" or "wav2vec2" (HuBERT shares wav2vec 2.0's encoder)
    normalize_waveform: bool  # the checkpoint's training normalised each waveform to zero mean, unit variance
    source: str  # checkpoint format: "torchaudio" or "huggingface"
    random_init: bool  # written by make-tiny with random weights

    @property
    def group_norm(self) -> bool:
        return bool(self.config["extractor_mode"] == "group_norm")

    @property
    def num_layers(self) -> int:
        return int(self.config["encoder_num_layers"])

    @property
    def dim(self) -> int:
        return int(self.config["encoder_embed_dim"])


def load_ssl(path: str | Path, arch: str = "") -> SslModel:
    """Load a local HuBERT / WavLM / wav2vec 2.0 checkpoint in any of the formats above."""
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"SSL checkpoint {str(path)!r} does not exist; nothing is downloaded at run "
                                      f"time: put the checkpoint there or pass its local path.")
    if path.is_dir():
        return _load_huggingface(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types for a file that is not a torch checkpoint
        raise CheckpointError(f"SSL checkpoint {str(path)!r} must be a torch .pt file. Got one that does not load: "
                              f"{type(e).__name__}: {' '.join(str(e).split())}") from e
    if isinstance(checkpoint, dict) and "config" in checkpoint and "state_dict" in checkpoint:
        if arch:
            raise ConfigError(f"SSL checkpoint {str(path)!r} carries its config: arch must not be given. "
                              f"Got arch={arch!r}.")
        return _build(path, dict(checkpoint["config"]), checkpoint["state_dict"],
                      bool(checkpoint.get("normalize_waveform", False)), "torchaudio",
                      bool(checkpoint.get(RANDOM_INIT_KEY, False)))
    if not arch:
        raise CheckpointError(f"SSL checkpoint {str(path)!r} is a bare state dict: pass arch=BUNDLE, the "
                              f"torchaudio.pipelines bundle it belongs to (e.g. arch=HUBERT_BASE), or save it "
                              f"as {{'config': ..., 'state_dict': ...}}.")
    config, normalize = _bundle_config(arch)
    return _build(path, config, checkpoint, normalize, "torchaudio", False)


def _bundle_config(arch: str) -> tuple[dict[str, Any], bool]:
    import torchaudio.pipelines

    bundle = getattr(torchaudio.pipelines, arch, None)
    params = getattr(bundle, "_params", None)
    if not isinstance(params, dict) or "encoder_num_layers" not in params:
        raise ConfigError(f"arch must name a torchaudio.pipelines wav2vec 2.0 / HuBERT / WavLM bundle, e.g. "
                          f"HUBERT_BASE, WAVLM_LARGE, WAV2VEC2_BASE. Got {arch!r}.")
    config = {k: v for k, v in params.items() if k != "aux_num_out"}
    return config, bool(getattr(bundle, "_normalize_waveform", False))


def _build(path: Path, config: dict[str, Any], state: Any, normalize: bool, source: str,
           random_init: bool) -> SslModel:
    from torchaudio.models import wav2vec2_model, wavlm_model

    family = "wavlm" if "encoder_num_buckets" in config else "wav2vec2"
    try:
        builder = wavlm_model if family == "wavlm" else wav2vec2_model
        model = builder(**{**config, "aux_num_out": None})
        if not isinstance(state, dict):
            raise TypeError(f"state_dict is a {type(state).__name__}")
        state = {k: v for k, v in state.items() if not k.startswith("aux.")}  # a CTC head is never run
        model.load_state_dict(state, strict=True)
    except Exception as e:  # a config torchaudio refuses, misshapen, missing or unexpected tensors
        raise CheckpointError(f"SSL checkpoint {str(path)!r} ({source} format) must hold every tensor of the "
                              f"model its config describes, and no other. Got {type(e).__name__}: "
                              f"{' '.join(str(e).split())[:600]}") from e
    model.eval().requires_grad_(False)
    return SslModel(model, config, family, normalize, source, random_init)


# ---------------------------------------------------------------- Hugging Face folders


def _load_huggingface(folder: Path) -> SslModel:
    config_file = folder / "config.json"
    weights = next((folder / f for f in HF_WEIGHT_FILES if (folder / f).is_file()), None)
    if not config_file.is_file() or weights is None:
        raise CheckpointError(f"SSL checkpoint folder {str(folder)!r} must be a Hugging Face model folder with "
                              f"config.json and one of {list(HF_WEIGHT_FILES)}. Got "
                              f"{sorted(p.name for p in folder.iterdir())[:8]}.")
    hf = json.loads(config_file.read_text(encoding="utf-8"))
    model_type = hf.get("model_type")
    if model_type not in HF_MODEL_TYPES:
        raise CheckpointError(f"{config_file}: model_type must be one of {sorted(HF_MODEL_TYPES)}. "
                              f"Got {model_type!r}.")
    config = hf_config(hf)
    state = _read_weights(weights)
    normalize = _hf_normalize(folder, hf)
    return _build(folder, config, hf_state_dict(state, config), normalize, "huggingface",
                  bool(hf.get(RANDOM_INIT_KEY, False)))


def hf_config(hf: dict[str, Any]) -> dict[str, Any]:
    """torchaudio builder arguments of a Hugging Face ``config.json`` (the same facts under other names)."""
    config: dict[str, Any] = {
        "extractor_mode": f"{hf.get('feat_extract_norm', 'group')}_norm",
        "extractor_conv_layer_config": [list(c) for c in zip(hf["conv_dim"], hf["conv_kernel"], hf["conv_stride"])],
        "extractor_conv_bias": bool(hf.get("conv_bias", False)),
        "encoder_embed_dim": hf["hidden_size"],
        "encoder_projection_dropout": 0.0,  # dropouts never run: the teacher is in eval mode
        "encoder_pos_conv_kernel": hf["num_conv_pos_embeddings"],
        "encoder_pos_conv_groups": hf["num_conv_pos_embedding_groups"],
        "encoder_num_layers": hf["num_hidden_layers"],
        "encoder_num_heads": hf["num_attention_heads"],
        "encoder_attention_dropout": 0.0,
        "encoder_ff_interm_features": hf["intermediate_size"],
        "encoder_ff_interm_dropout": 0.0,
        "encoder_dropout": 0.0,
        "encoder_layer_norm_first": bool(hf.get("do_stable_layer_norm", False)),
        "encoder_layer_drop": 0.0,
    }
    if hf.get("model_type") == "wavlm":
        config["encoder_num_buckets"] = hf["num_buckets"]
        config["encoder_max_distance"] = hf["max_bucket_distance"]
    return config


def hf_state_dict(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A Hugging Face state dict renamed onto torchaudio's modules; heads and training-only tensors dropped."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for prefix in HF_PREFIXES:
            key = key.removeprefix(prefix)
        if key.startswith("feature_extractor."):
            out[key] = value
        elif key.startswith("feature_projection."):
            out[f"encoder.{key}"] = value
        elif key.startswith("encoder."):
            key = key.replace(".weight_g", ".parametrizations.weight.original0")
            key = key.replace(".weight_v", ".parametrizations.weight.original1")
            out[f"encoder.transformer.{key.removeprefix('encoder.')}"] = value
    if "encoder_num_buckets" in config:
        _fuse_wavlm_projections(out, int(config["encoder_num_layers"]))
    return out


def _fuse_wavlm_projections(state: dict[str, torch.Tensor], num_layers: int) -> None:
    """WavLM's separate q/k/v projections -> the one in_proj of torchaudio's ``MultiheadAttention``."""
    for i in range(num_layers):
        base = f"encoder.transformer.layers.{i}.attention"
        for kind in ("weight", "bias"):
            parts = [state.pop(f"{base}.{p}_proj.{kind}") for p in ("q", "k", "v")]
            state[f"{base}.attention.in_proj_{kind}"] = torch.cat(parts)
            state[f"{base}.attention.out_proj.{kind}"] = state.pop(f"{base}.out_proj.{kind}")


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu"))
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(loaded, dict):
            raise TypeError(f"it holds a {type(loaded).__name__}, not a state dict")
        return loaded
    except Exception as e:
        raise CheckpointError(f"SSL weights {str(path)!r} must be a state dict in safetensors or torch format. "
                              f"Got one that does not load: {type(e).__name__}: {e}") from e


def _hf_normalize(folder: Path, hf: dict[str, Any]) -> bool:
    """``do_normalize`` of the feature extractor's config when there is one; else the stable-layer-norm rule."""
    processor = folder / "preprocessor_config.json"
    if processor.is_file():
        return bool(json.loads(processor.read_text(encoding="utf-8")).get("do_normalize", False))
    return bool(hf.get("do_stable_layer_norm", False))  # the large models, trained on normalised audio


# ---------------------------------------------------------------- forward


def num_frames(config: dict[str, Any], num_samples: int) -> int:
    """50 Hz frames the convolutional front end makes of ``num_samples`` samples (no padding, floor)."""
    length = num_samples
    for _, kernel, stride in config["extractor_conv_layer_config"]:
        length = (length - kernel) // stride + 1 if length >= kernel else 0
    return max(0, length)


def encode_layers(ssl: SslModel, waveforms: list[torch.Tensor], layers: list[int]) -> list[torch.Tensor]:
    """Each cut's 50 Hz outputs of ``layers`` (0-based transformer layer indices), ``[T_i, len(layers), D]``.

    Cuts must give at least one frame. Equal, for a cut alone, to
    ``[model.extract_features(waveform[None])[0][k][0] for k in layers]``.
    """
    model: Any = ssl.model
    if ssl.normalize_waveform:
        waveforms = [F.layer_norm(w, w.shape) for w in waveforms]
    features, lengths = _front_end(ssl, waveforms)
    encoder = model.encoder
    x = encoder.feature_projection(features)
    pad = torch.arange(x.shape[1], device=x.device)[None, :] >= lengths[:, None]  # True on padding
    padded = bool(pad.any())
    x = x.masked_fill(pad[:, :, None], 0.0)
    transformer = encoder.transformer
    x = transformer._preprocess(x)  # positional convolution (and the first LayerNorm of layer-norm-first models)
    outputs: dict[int, torch.Tensor] = {}
    position_bias = None
    for index, layer in enumerate(transformer.layers[: max(layers) + 1]):
        if ssl.family == "wavlm":
            # additive, in the bias's dtype: WavLM adds it to its relative position bias
            key_mask = torch.zeros(pad.shape, dtype=x.dtype, device=x.device).masked_fill(pad, -torch.inf)
            x, position_bias = layer(x, position_bias=position_bias, key_padding_mask=key_mask if padded else None)
        else:
            keep = (~pad)[:, None, None, :].expand(-1, 1, x.shape[1], -1) if padded else None
            x, position_bias = layer(x, attention_mask=keep, position_bias=position_bias)
        if index in layers:
            outputs[index] = x
    stacked = torch.stack([outputs[k] for k in layers], dim=2)  # [B, T, L, D]
    return [stacked[i, : int(n)] for i, n in enumerate(lengths.tolist())]


def _front_end(ssl: SslModel, waveforms: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Convolutional features ``[B, max T, C]`` (zero past each cut's end) and the frame counts."""
    extractor: Any = ssl.model.feature_extractor  # type: ignore[union-attr]
    device = waveforms[0].device
    if ssl.group_norm:  # its GroupNorm normalises over time: each cut alone, at its own length
        feats = [extractor(w[None], None)[0][0] for w in waveforms]
        lengths = torch.tensor([f.shape[0] for f in feats], device=device)
        return torch.nn.utils.rnn.pad_sequence(feats, batch_first=True), lengths
    batch = torch.nn.utils.rnn.pad_sequence(waveforms, batch_first=True)
    samples = torch.tensor([w.shape[0] for w in waveforms], device=device)
    feats, lengths = extractor(batch, samples)
    return feats, lengths

