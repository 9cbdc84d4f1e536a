"""The HuBERT, WavLM and wav2vec 2.0 teachers: frames of any set of transformer layers, in one pass.

All three run torchaudio's model code over a local checkpoint
(``_ssl_model``: torchaudio's own ``.pt`` with its config, a bare
torchaudio bundle state dict with ``arch=BUNDLE``, or a Hugging Face folder).
A stored frame is built in two steps:

1. per 50 Hz frame, the outputs of ``layers`` (0-based transformer layer
   indices, ``-1`` the last; torchaudio's ``extract_features`` list order)
   concatenated in the order given: ``len(layers) * D`` values;
2. ``rate=50`` stores these; ``rate=25`` (default, the student's rate) joins
   each pair of them, ``pool="stack"`` by concatenation (``2 * len(layers) * D``
   values, as the whisper teacher's ``stack=2``) or ``pool="mean"`` by their
   average; an odd last 50 Hz frame is dropped.

Cuts too short for one stored frame (under 400 samples at 50 Hz, 720 at 25 Hz)
come back as an empty ``[0, dim]`` array: the job records them as failed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mt2kd._typed import from_dict
from mt2kd.errors import ConfigError
from mt2kd.extract._ssl_model import RANDOM_INIT_KEY, SslModel, encode_layers, load_ssl, num_frames
from mt2kd.extract._teacher import Teacher, register_teacher
from mt2kd.store import TeacherSpec

NAMES = ("hubert", "wavlm", "wav2vec2")
RATES = (50, 25)  # Hz of the stored frames
POOLS = ("stack", "mean")  # how rate=25 joins two 50 Hz frames
STORED_DTYPE = "float16"


def parse_layers(text: str | int) -> tuple[int, ...]:
    """``"4,8,-1"`` (or one int) -> ``(4, 8, -1)``; each an int >= -1, no repeats.

    Examples
    --------
    >>> parse_layers("3,6")
    (3, 6)
    """
    items = [text] if isinstance(text, int) else str(text).split(",")
    try:
        layers = tuple(int(str(item).strip()) for item in items)
    except ValueError as e:
        raise ConfigError(f"layers must be comma-separated layer indices (0-based, -1 the last), e.g. "
                          f"'4,8,-1'. Got {text!r}.") from e
    if any(k < -1 for k in layers) or len(set(layers)) != len(layers):
        raise ConfigError(f"layers must be distinct indices >= -1. Got {text!r}.")
    return layers


@dataclasses.dataclass(frozen=True)
class SslOptions:
    """What an SSL teacher emits, beyond the checkpoint itself."""

    layers: str = "-1"  # comma-separated 0-based transformer layers ("-1" the last), concatenated in this order
    rate: int = 25  # Hz of the stored frames: 50 (every frame) or 25 (pairs of frames joined)
    pool: str = "stack"  # rate 25: "stack" concatenates each pair of 50 Hz frames, "mean" averages it
    normalize: bool | None = None  # waveform to zero mean, unit variance per cut; None: as the checkpoint says
    arch: str = ""  # torchaudio.pipelines bundle of a bare state dict (HUBERT_BASE, ...); "" otherwise

    def __post_init__(self) -> None:
        parse_layers(self.layers)
        if self.rate not in RATES:
            raise ConfigError(f"rate must be one of {list(RATES)} (Hz). Got {self.rate!r}.")
        if self.pool not in POOLS:
            raise ConfigError(f"pool must be one of {list(POOLS)}. Got {self.pool!r}.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SslOptions:
        return from_dict(cls, {**data, "layers": str(data.get("layers", cls.layers))}, "SSL teacher option",
                         tuples=False)


class SslTeacher(Teacher):
    """A frozen HuBERT / WavLM / wav2vec 2.0 encoder; ``extract`` gives float32 ``[frames, dim]`` per cut."""

    def __init__(self, name: str, checkpoint: str | Path, options: dict[str, Any], precision: str = "fp32") -> None:
        self.name = name
        self.config = SslOptions.from_dict(options)
        super().__init__(checkpoint, {**self.config.to_dict(), "precision": precision}, precision)
        self.ssl: SslModel = load_ssl(self.checkpoint, self.config.arch)
        _check_family(name, self.ssl, self.checkpoint)
        self.layers = _resolve_layers(parse_layers(self.config.layers), self.ssl.num_layers, name)
        self.normalize = self.ssl.normalize_waveform if self.config.normalize is None else self.config.normalize

    @property
    def dim(self) -> int:
        pair = 2 if self.config.rate == 25 and self.config.pool == "stack" else 1
        return pair * len(self.layers) * self.ssl.dim

    @property
    def spec(self) -> TeacherSpec:
        pair = 2 if self.config.rate == 25 and self.config.pool == "stack" else 1  # 50 Hz frames per stored row
        config = {**self.options, "resolved_layers": list(self.layers), "frames_per_row": pair,
                  "normalize_waveform": self.normalize,
                  "format": self.ssl.source, "model": self.ssl.config, "random_init": self.ssl.random_init}
        return TeacherSpec(self.name, "frames", self.dim, frame_rate=float(self.config.rate), dtype=STORED_DTYPE,
                           fingerprint=self.fingerprint, config=config)

    def num_frames(self, num_samples: int) -> int:
        """Stored frames of a cut of ``num_samples`` samples."""
        frames = num_frames(self.ssl.config, num_samples)
        return frames if self.config.rate == 50 else frames // 2

    def _to(self, device: str) -> None:
        self._check_precision(device)
        self.ssl.model.to(device)

    @torch.inference_mode()
    def _extract(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        counts = [self.num_frames(len(w)) for w in waveforms]
        usable = [i for i, n in enumerate(counts) if n > 0]
        outputs = [np.zeros((0, self.dim), np.float32) for _ in waveforms]
        if not usable:
            return outputs
        ssl = dataclasses.replace(self.ssl, normalize_waveform=self.normalize)
        tensors = [torch.from_numpy(np.ascontiguousarray(waveforms[i], dtype=np.float32)).to(self.device)
                   for i in usable]
        with self._autocast():
            encoded = encode_layers(ssl, tensors, list(self.layers))
        for i, frames in zip(usable, encoded):
            outputs[i] = self._pool(frames.float().cpu().numpy(), counts[i])
        return outputs

    def _pool(self, frames: np.ndarray, count: int) -> np.ndarray:
        """``[T, L, D]`` 50 Hz layer outputs -> ``[count, dim]`` stored frames (see the module docstring)."""
        flat = frames.reshape(frames.shape[0], -1)
        if self.config.rate == 50:
            return np.ascontiguousarray(flat)
        pairs = flat[: 2 * count].reshape(count, 2, flat.shape[1])
        if self.config.pool == "mean":
            return np.ascontiguousarray(pairs.mean(axis=1))
        return np.ascontiguousarray(pairs.reshape(count, self.dim))


def _check_family(name: str, ssl: SslModel, checkpoint: Path) -> None:
    wanted = "wavlm" if name == "wavlm" else "wav2vec2"
    if ssl.family != wanted:
        what = "a WavLM model" if wanted == "wavlm" else "a wav2vec 2.0 / HuBERT model"
        raise ConfigError(f"{name} checkpoint {str(checkpoint)!r} must hold {what}. Got a {ssl.family} model "
                          f"(load it as --teacher {'wavlm' if ssl.family == 'wavlm' else 'hubert or wav2vec2'}=...).")


def _resolve_layers(layers: tuple[int, ...], num_layers: int, name: str) -> tuple[int, ...]:
    resolved = tuple(num_layers - 1 if k == -1 else k for k in layers)
    if any(k >= num_layers for k in resolved) or len(set(resolved)) != len(resolved):
        raise ConfigError(f"{name} layers must be distinct indices in [0, {num_layers - 1}] (or -1, the last). "
                          f"Got {','.join(str(k) for k in layers)}.")
    return resolved


def _loader(name: str) -> Any:
    def load(checkpoint: str | Path, layers: str | int = "-1", rate: int = 25, pool: str = "stack",
             normalize: bool | None = None, arch: str = "", precision: str = "fp32") -> SslTeacher:
        options = {"layers": layers, "rate": rate, "pool": pool, "normalize": normalize, "arch": arch}
        return SslTeacher(name, checkpoint, options, precision)

    load.__name__ = f"load_{name}_teacher"
    load.__doc__ = f"""Load the {name} teacher from a local checkpoint (see ``mt2kd.extract.ssl``).

    Parameters
    ----------
    checkpoint : torchaudio ``.pt`` ({{config, state_dict}}), a bare bundle state dict (with ``arch``), or a
        Hugging Face folder (config.json + model.safetensors).
    layers : comma-separated 0-based transformer layers, e.g. "3,6,-1"; their outputs are concatenated.
    rate : 50 or 25 Hz (pairs of 50 Hz frames joined by ``pool``: "stack" or "mean").
    normalize : per-cut waveform normalisation; None takes the checkpoint's.
    arch : torchaudio.pipelines bundle name, for a bare state dict only.
    precision : "fp32", or "bf16"/"fp16" autocast (CUDA only).

    Examples
    --------
    >>> teacher = load_teacher("{name}", "{name}.pt", layers="3,6", rate=25)
    >>> teacher.extract([np.zeros(16_000, np.float32)])[0].shape[0]
    24
    """
    return load


for _name in NAMES:
    register_teacher(_name)(_loader(_name))


# ---------------------------------------------------------------- tiny checkpoints

TINY_CONFIG: dict[str, Any] = {
    "extractor_conv_layer_config": [[32, 10, 5], [32, 3, 2], [32, 3, 2], [32, 3, 2], [32, 3, 2], [32, 2, 2],
                                    [32, 2, 2]],  # the released strides and kernels (320 samples a frame) at toy width
    "extractor_conv_bias": False, "encoder_embed_dim": 48, "encoder_projection_dropout": 0.0,
    "encoder_pos_conv_kernel": 16, "encoder_pos_conv_groups": 4, "encoder_num_layers": 3, "encoder_num_heads": 4,
    "encoder_attention_dropout": 0.0, "encoder_ff_interm_features": 96, "encoder_ff_interm_dropout": 0.0,
    "encoder_dropout": 0.0, "encoder_layer_drop": 0.0,
}
TINY_ARCH = {  # base-size layout (GroupNorm front end, post-norm) for hubert/wav2vec2, large layout for wavlm
    "hubert": {"extractor_mode": "group_norm", "encoder_layer_norm_first": False},
    "wav2vec2": {"extractor_mode": "group_norm", "encoder_layer_norm_first": False},
    "wavlm": {"extractor_mode": "layer_norm", "encoder_layer_norm_first": True, "encoder_num_buckets": 32,
              "encoder_max_distance": 64},
}


def write_tiny_ssl_checkpoint(path: str | Path, name: str, seed: int = 0, **overrides: Any) -> Path:
    """Write a random-weight ``{config, state_dict}`` torchaudio checkpoint of teacher ``name``.

    Examples
    --------
    >>> path = write_tiny_ssl_checkpoint(tmp_path / "hubert.pt", "hubert")
    >>> load_teacher("hubert", path).spec.dim
    96
    """
    from torchaudio.models import wav2vec2_model, wavlm_model

    if name not in TINY_ARCH:
        raise ConfigError(f"SSL teacher name must be one of {list(TINY_ARCH)}. Got {name!r}.")
    config = {**TINY_CONFIG, **TINY_ARCH[name], **overrides}
    builder = wavlm_model if "encoder_num_buckets" in config else wav2vec2_model
    with torch.random.fork_rng(devices=[]), torch.no_grad():  # leave the caller's RNG untouched
        torch.manual_seed(seed)
        model = builder(**config, aux_num_out=None)
        for param in model.parameters():  # no norm left at identity: every part matters
            if param.ndim == 1:
                param.add_(0.1 * torch.randn_like(param))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": config, "state_dict": model.state_dict(), RANDOM_INIT_KEY: True}, path)
    return path


__all__ = ["NAMES", "SslOptions", "SslTeacher", "parse_layers", "write_tiny_ssl_checkpoint"]
