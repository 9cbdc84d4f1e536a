"""The BEATs teacher: 527 pooled AudioSet logits per clip, as if each clip ran alone.

Loads the released fine-tuned checkpoints (``{'cfg', 'model', 'label_dict'}``,
``torch.load(..., weights_only=True)``) with their key names unchanged, and
computes the Kaldi fbank and the model in batches. What is stored per clip is
the mean over its valid patches of the pre-sigmoid patch logits.

Batching differs from the released code on purpose: each clip's frames,
patches, attention keys and pooling are limited to what it has alone, so its
logits never depend on its batch (the released code keeps extra patches for
short clips in a padded batch). Clips shorter than one patch (2800 samples,
0.175 s) are zero-padded to 2800 samples under ``min_duration_policy="pad"``
(the default) or refused with a ValidationError naming the clip under
``"fail"``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mt2kd.errors import CheckpointError, CheckpointNotFoundError, ConfigError, ValidationError
from mt2kd.extract._beats_fbank import FRAME_LENGTH, FRAME_SHIFT, beats_fbank, num_frames
from mt2kd.extract._beats_model import BeatsConfig, BeatsModel
from mt2kd.extract._teacher import Teacher, register_teacher
from mt2kd.store import TeacherSpec

__all__ = ["BeatsTeacher", "load_beats", "load_beats_model", "write_tiny_beats_checkpoint", "MIN_DURATION_POLICIES"]

MIN_DURATION_POLICIES = ("pad", "fail")
RANDOM_INIT_KEY = "mt2kd_random_init"  # extra top-level checkpoint key marking random test weights
NUM_SHOWN_KEYS = 5  # how many missing/unexpected keys an error message lists


def min_num_samples(config: BeatsConfig) -> int:
    """Fewest samples that give one patch: ``input_patch_size`` frames (2800 for 16)."""
    return FRAME_LENGTH + (config.input_patch_size - 1) * FRAME_SHIFT


def _read_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointNotFoundError(f"BEATs checkpoint {str(path)!r} must be an existing file. Got no such file.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for non-checkpoint bytes
        raise CheckpointError(f"BEATs checkpoint {str(path)!r} must be a torch file loadable with "
                              f"weights_only=True. Got {type(e).__name__}: {e}") from e
    if not isinstance(checkpoint, dict) or not {"cfg", "model"} <= set(checkpoint):
        got = sorted(map(str, checkpoint)) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"BEATs checkpoint {str(path)!r} must be a dict with 'cfg' and 'model'. Got {got}.")
    if not isinstance(checkpoint["cfg"], dict) or not isinstance(checkpoint["model"], dict):
        raise CheckpointError(f"BEATs checkpoint {str(path)!r}: 'cfg' and 'model' must be dicts.")
    return checkpoint


def _load_weights(model: BeatsModel, weights: dict[str, Any], path: Path) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"BEATs checkpoint {str(path)!r}: 'model' must hold exactly the {len(expected)} keys of a "
            f"fine-tuned BEATs with its cfg. Got {len(missing)} missing (first: {missing[:NUM_SHOWN_KEYS]}) "
            f"and {len(unexpected)} unexpected (first: {unexpected[:NUM_SHOWN_KEYS]})."
        )
    wrong = [f"{k}: {tuple(weights[k].shape)} (expected {tuple(v.shape)})"
             for k, v in expected.items() if tuple(weights[k].shape) != tuple(v.shape)]
    if wrong:
        raise CheckpointError(f"BEATs checkpoint {str(path)!r}: tensor shapes must match its cfg. "
                              f"Got {wrong[:NUM_SHOWN_KEYS]}.")
    model.load_state_dict(weights, strict=True)


def load_beats_model(path: str | Path) -> tuple[BeatsModel, dict[str, Any]]:
    """Build the model from a checkpoint's cfg and load its weights; returns (model in eval mode, checkpoint).

    Examples
    --------
    >>> model, checkpoint = load_beats_model("BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt")
    >>> model.config.encoder_layers
    12
    """
    path = Path(path)
    checkpoint = _read_checkpoint(path)
    config = BeatsConfig.from_dict(checkpoint["cfg"], source=f"BEATs checkpoint {str(path)!r} cfg")
    model = BeatsModel(config)
    _load_weights(model, checkpoint["model"], path)
    model.eval().requires_grad_(False)
    return model, checkpoint


class BeatsTeacher(Teacher):
    """Frozen BEATs tagger; ``extract`` gives one float32 [predictor_class] logit vector per clip."""

    name = "beats"

    def __init__(self, checkpoint: str | Path, options: dict[str, Any], precision: str = "fp32") -> None:
        super().__init__(checkpoint, options, precision)
        policy = self.options.setdefault("min_duration_policy", "pad")
        if policy not in MIN_DURATION_POLICIES:
            raise ConfigError(f"min_duration_policy must be one of {list(MIN_DURATION_POLICIES)}. Got {policy!r}.")
        self.model, raw = load_beats_model(self.checkpoint)
        self.config = self.model.config
        self.random_init = bool(raw.get(RANDOM_INIT_KEY, False))

    @property
    def spec(self) -> TeacherSpec:
        config = {**self.options, "precision": self.precision, "random_init": self.random_init,
                  "cfg": self.config.to_dict()}
        return TeacherSpec(self.name, "clip", self.config.predictor_class, dtype="float32",
                           fingerprint=self.fingerprint, config=config)

    def _to(self, device: str) -> None:
        self.model.to(device)

    def _prepare(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Check every clip and apply the short-clip policy."""
        minimum = min_num_samples(self.config)
        prepared = []
        for i, w in enumerate(waveforms):
            if not np.all(np.isfinite(w)):
                raise ValidationError(f"beats: waveform {i} must hold finite samples. Got NaN or inf.")
            if len(w) < minimum:
                if self.options["min_duration_policy"] == "fail":
                    raise ValidationError(f"beats: waveform {i} must have at least {minimum} samples "
                                          f"(one {self.config.input_patch_size}-frame patch). Got {len(w)}.")
                w = np.pad(w, (0, minimum - len(w)))  # zeros after the clip, as digital silence
            prepared.append(np.asarray(w, dtype=np.float32))
        return prepared

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        if not self.device.startswith("cuda"):
            raise ConfigError(f"beats: precision {self.precision!r} needs a CUDA device. Got {self.device!r}.")
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast("cuda", dtype=dtype)

    @torch.inference_mode()
    def _extract(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        clips = self._prepare(waveforms)
        batch = torch.zeros(len(clips), max(len(c) for c in clips), dtype=torch.float32)
        for row, clip in zip(batch, clips):
            row[: len(clip)] = torch.from_numpy(clip)
        frames = torch.tensor([num_frames(len(c)) for c in clips])
        fbank = beats_fbank(batch.to(self.device))  # always float32: log-mel precision matters
        with self._autocast():
            logits = self.model(fbank, frames)["logits"]
        return list(logits.float().cpu().numpy())


@register_teacher("beats")
def load_beats(checkpoint: str | Path, precision: str = "fp32", min_duration_policy: str = "pad") -> BeatsTeacher:
    """Load the BEATs teacher from a local fine-tuned checkpoint.

    Parameters
    ----------
    checkpoint : path of a released fine-tuned ``.pt`` (``{'cfg', 'model', 'label_dict'}``).
    precision : "fp32", or "bf16"/"fp16" autocast (CUDA only; the fbank stays float32).
    min_duration_policy : "pad" zero-pads clips under 0.175 s to one patch; "fail" raises ValidationError.

    Examples
    --------
    >>> teacher = load_teacher("beats", "BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt").to("cuda")
    >>> teacher.extract([np.zeros(16_000, np.float32)])[0].shape
    (527,)
    """
    # Precision is an option too, so that it enters the fingerprint: bf16 logits are not fp32 logits.
    return BeatsTeacher(checkpoint, {"min_duration_policy": min_duration_policy, "precision": precision}, precision)


TINY_CFG: dict[str, Any] = {
    "input_patch_size": 16, "embed_dim": 64, "conv_bias": False, "encoder_layers": 2,
    "encoder_embed_dim": 32, "encoder_ffn_embed_dim": 64, "encoder_attention_heads": 4,
    "activation_fn": "gelu", "layer_wise_gradient_decay_ratio": 0.6, "layer_norm_first": False,
    "deep_norm": True, "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0,
    "encoder_layerdrop": 0.0, "dropout_input": 0.0, "conv_pos": 128, "conv_pos_groups": 16,
    "relative_position_embedding": True, "num_buckets": 320, "max_distance": 800, "gru_rel_pos": True,
    "finetuned_model": True, "predictor_dropout": 0.0, "predictor_class": 527,
}  # the released layout at toy width; 527 classes so stores look like real ones


def _random_parameters(model: BeatsModel, seed: int) -> Iterator[tuple[str, torch.Tensor]]:
    """Random values for every parameter, none left at an identity-like init."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():  # the shared bias table is listed once
        noise = torch.randn(param.shape, generator=generator)
        if name.endswith("bias") and param.ndim == 1 or name.endswith("grep_a"):
            value = 0.1 * noise + (1.0 if name.endswith("grep_a") else 0.0)
        elif "layer_norm" in name:  # LayerNorm weights
            value = 1.0 + 0.1 * noise
        elif name.endswith("weight_g"):
            value = 1.0 + 0.5 * noise.abs()
        elif name.endswith("relative_attention_bias.weight"):
            value = noise
        else:
            fan_in = param[0].numel() if param.ndim > 1 else param.numel()
            value = noise / fan_in**0.5
        yield name, value


def write_tiny_beats_checkpoint(path: str | Path, seed: int = 0, **cfg_overrides: Any) -> Path:
    """Write a random-weight BEATs checkpoint in the released format (for tests and demos).

    The checkpoint also carries ``mt2kd_random_init: True``, which the teacher
    records in its spec so stores built from it say they come from random weights.

    Examples
    --------
    >>> path = write_tiny_beats_checkpoint(tmp_path / "beats_tiny.pt", seed=1)
    >>> load_teacher("beats", path).extract([np.zeros(16_000, np.float32)])[0].shape
    (527,)
    """
    unknown = sorted(set(cfg_overrides) - set(TINY_CFG))
    if unknown:
        raise ConfigError(f"cfg overrides must be BEATs cfg fields {sorted(TINY_CFG)}. Got {unknown}.")
    cfg = {**TINY_CFG, **cfg_overrides}
    model = BeatsModel(BeatsConfig.from_dict(cfg))
    with torch.no_grad():
        for name, value in _random_parameters(model, seed):
            model.get_parameter(name).copy_(value)
    checkpoint = {
        "cfg": cfg,
        "model": model.state_dict(),
        "label_dict": {i: f"class_{i:03d}" for i in range(cfg["predictor_class"])},
        RANDOM_INIT_KEY: True,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path
