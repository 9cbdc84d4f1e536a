"""The whisper teacher: stacked 25 Hz encoder frames from an openai-whisper checkpoint.

Two length modes (recorded in the store through the spec's config):

- ``trim`` (default): every 30 s window is encoded at its own length with a
  key-padding mask and its own log-mel floor, so a cut's frames never depend
  on the other cuts of its batch (see ``_whisper_model``).
- ``pad30``: whisper's native input, each window padded to 30 s; equal to
  ``model.embed_audio(log_mel_spectrogram(pad_or_trim(x)))[:, :n]``.

Cuts longer than 30 s are cut into 30 s windows (``_frames.window_bounds``),
each encoded as if it were a cut of its own; their 50 Hz frames are
concatenated *before* stacking, so the total is always
``num_stacked_frames(len(cut), stack)``, whatever ``stack`` is.

Several layers in one pass (``layers="8,16,-1"``): the blocks run once and
each 50 Hz frame holds the outputs of those layers concatenated in the order
given (``len(layers) * n_audio_state`` values), before stacking; so a stored
frame is ``stack`` sub-frames x layers x ``n_audio_state``, the layout of
the SSL teachers. The spec's config records ``resolved_layers`` and
``frames_per_row`` (= ``stack``) for readers that take one layer out.

Cuts too short for one stored frame (under ``min_num_samples(stack)``
samples, 480 for ``stack=2``) come back as an empty ``[0, dim]`` array, never
an exception: one bad cut must not fail its batch, and the extraction job
records an empty output as a failed cut.
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
from mt2kd.extract._frames import (
    num_encoder_frames,
    num_mel_frames,
    num_stacked_frames,
    stacked_frame_rate,
    window_bounds,
)
from mt2kd.extract._teacher import Teacher, register_teacher
from mt2kd.extract._whisper_model import (
    RANDOM_INIT_KEY,
    encode,
    load_whisper,
    log_mel_batch,
    pack_encoder,
    pad_to_window,
)
from mt2kd.store import TeacherSpec

MODES = ("trim", "pad30")
HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # autocast dtypes by precision name
STORED_DTYPE = "float16"  # default on-disk dtype of whisper frames


@dataclasses.dataclass(frozen=True)
class WhisperOptions:
    """What the whisper teacher emits, beyond the checkpoint itself."""

    layer: int = -1  # -1: last block + ln_post; k >= 0: raw output of block k (0-based)
    layers: str = ""  # several layers in one pass, comma-separated as `layer` counts them ("" = `layer` alone)
    mode: str = "trim"  # "trim": each window at its own length, masked; "pad30": padded to 30 s
    stack: int = 2  # successive 50 Hz frames concatenated into one stored frame (2 -> 25 Hz)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"whisper mode must be one of {list(MODES)}. Got {self.mode!r}.")
        if not isinstance(self.stack, int) or self.stack < 1:
            raise ConfigError(f"whisper stack must be a positive int. Got {self.stack!r}.")
        if not isinstance(self.layer, int) or self.layer < -1:
            raise ConfigError(f"whisper layer must be -1 or a block index >= 0. Got {self.layer!r}.")
        if self.layers and self.layer != -1:
            raise ConfigError(f"whisper takes layer or layers, not both. Got layer={self.layer} and "
                              f"layers={self.layers!r}.")
        self.layer_list()

    def layer_list(self) -> list[int]:
        """The layers emitted, in order: ``layers`` parsed, or ``[layer]``."""
        if not self.layers:
            return [self.layer]
        try:
            parsed = [int(part) for part in str(self.layers).split(",")]
        except ValueError:
            parsed = []
        if not parsed or any(k < -1 for k in parsed) or len(set(parsed)) != len(parsed):
            raise ConfigError(f"whisper layers must be distinct comma-separated block indices (0-based, -1 the "
                              f"last + ln_post), e.g. '8,16,-1'. Got {self.layers!r}.")
        return parsed

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if not self.layers:  # a one-layer teacher keeps the options (and so the fingerprint) it always had
            del data["layers"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WhisperOptions:
        if "layers" in data and not isinstance(data["layers"], str):  # layers=8 reads as an int
            data = {**data, "layers": str(data["layers"])}
        return from_dict(cls, data, "whisper option", tuples=False)


class WhisperTeacher(Teacher):
    """Frozen whisper encoder; ``extract`` gives float32 ``[num_stacked_frames, stack * n_audio_state]`` per cut."""

    name = "whisper"

    def __init__(self, checkpoint: str | Path, options: dict[str, Any], precision: str = "fp32") -> None:
        self.config = WhisperOptions.from_dict(options)
        # precision enters the fingerprint: bf16 frames are not fp32 frames
        super().__init__(checkpoint, {**self.config.to_dict(), "precision": precision}, precision)
        self.encoder, self.dims, self.random_init = load_whisper(self.checkpoint)
        self.layers = self.config.layer_list()
        if max(self.layers) >= self.dims["n_audio_layer"]:
            raise ConfigError(f"whisper layer must be -1 or in [0, {self.dims['n_audio_layer'] - 1}] for "
                              f"{str(self.checkpoint)!r}. Got {max(self.layers)}.")
        self._weights = pack_encoder(self.encoder, "cpu", torch.float32)

    @property
    def dim(self) -> int:
        """Width of one stored frame: ``stack * len(layers) * n_audio_state``."""
        return self.config.stack * len(self.layers) * self.dims["n_audio_state"]

    @property
    def spec(self) -> TeacherSpec:
        config = {**self.options, "n_mels": self.dims["n_mels"], "dims": dict(self.dims),
                  "random_init": self.random_init}
        if self.config.layers:  # a layer axis: how to take one layer out of a stored frame
            config.update(resolved_layers=self.layers, frames_per_row=self.config.stack)
        return TeacherSpec(self.name, "frames", self.dim, frame_rate=stacked_frame_rate(self.config.stack),
                           dtype=STORED_DTYPE, fingerprint=self.fingerprint, config=config)

    def _to(self, device: str) -> None:
        self._check_precision(device)
        matmul_dtype = HALF_DTYPES.get(self.precision, torch.float32)
        self._weights = pack_encoder(self.encoder, device, matmul_dtype)

    @torch.inference_mode()
    def _extract(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        counts = [num_stacked_frames(len(w), self.config.stack) for w in waveforms]
        bounds = [window_bounds(len(w)) if n > 0 else [] for w, n in zip(waveforms, counts)]  # too short: empty
        windows = [np.asarray(w[s:e], dtype=np.float32) for w, b in zip(waveforms, bounds) for s, e in b]
        encoded = self._encode_windows(windows) if windows else []
        outputs, start = [], 0
        for cut_bounds, num_frames in zip(bounds, counts):
            parts = encoded[start: start + len(cut_bounds)]
            start += len(cut_bounds)
            outputs.append(self._stack(parts, num_frames))
        return outputs

    def _encode_windows(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        """Valid 50 Hz frames of each window, float32 ``[(mel + 1) // 2, len(layers) * n_audio_state]``."""
        pad30 = self.config.mode == "pad30"
        mel_input = [pad_to_window(w) for w in windows] if pad30 else windows
        num_mel = [num_mel_frames(len(w)) for w in mel_input]
        mel = log_mel_batch(mel_input, self.dims["n_mels"], self.device)  # float32 whatever the precision
        with self._autocast():
            states = encode(self._weights, mel, num_mel, self.layers)
        num_frames = [num_encoder_frames(len(w)) for w in windows]
        # copy only the valid frames off the device: pad30 windows are mostly padding
        valid = torch.arange(states.shape[1], device=states.device)[None, :] < torch.tensor(
            num_frames, device=states.device)[:, None]
        frames = states[valid].float().cpu().numpy()
        return np.split(frames, np.cumsum(num_frames)[:-1])

    def _stack(self, parts: list[np.ndarray], num_frames: int) -> np.ndarray:
        if num_frames == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        frames = np.concatenate(parts)  # windows joined at 50 Hz, then stacked: see the module docstring
        return np.ascontiguousarray(frames[: num_frames * self.config.stack].reshape(num_frames, self.dim))


@register_teacher("whisper")
def load_whisper_teacher(checkpoint: str | Path, layer: int = -1, mode: str = "trim", stack: int = 2,
                         precision: str = "fp32", layers: str | int = "") -> WhisperTeacher:
    """Load the whisper teacher from a local openai-whisper ``.pt`` (encoder only).

    Parameters
    ----------
    checkpoint : path of an openai-whisper checkpoint (``{'dims', 'model_state_dict'}``), e.g. large-v3.pt.
    layer : -1 for the last block + ``ln_post``; ``k`` for the raw output of block ``k``.
    layers : several such layers in one pass, comma-separated ("8,16,-1"); per 50 Hz frame their outputs are
        concatenated in this order, so one store teacher holds them all (a layer axis, see the module docstring).
    mode : "trim" (each cut at its own length, masked) or "pad30" (whisper's 30 s input).
    stack : 50 Hz frames concatenated per stored frame; 2 gives 25 Hz, ``2 * n_audio_state`` dims.
    precision : "fp32", or "bf16"/"fp16" autocast (CUDA only; the log-mel stays float32).

    Examples
    --------
    >>> teacher = load_teacher("whisper", "large-v3.pt", layer=-1, mode="trim").to("cuda")
    >>> teacher.extract([np.zeros(16_000, np.float32)])[0].shape
    (25, 2560)
    """
    options: dict[str, Any] = {"layer": layer, "mode": mode, "stack": stack}
    if layers != "":
        options["layers"] = str(layers)
    return WhisperTeacher(checkpoint, options, precision)


TINY_DIMS: dict[str, int] = {
    "n_audio_ctx": 1500, "n_audio_state": 64, "n_audio_head": 4, "n_audio_layer": 2,
    "n_vocab": 128, "n_text_ctx": 16, "n_text_state": 64, "n_text_head": 4, "n_text_layer": 1,
}  # the real layout at toy width; n_audio_ctx stays 1500 so 30 s inputs fit as in every release


def write_tiny_whisper_checkpoint(path: str | Path, n_mels: int = 80, seed: int = 0, **dims: int) -> Path:
    """Write a random-weight whisper checkpoint in openai-whisper's ``.pt`` format.

    ``whisper.load_model(path)`` loads it. It also carries
    ``mt2kd_random_init: True``, recorded in the teacher's spec so stores built
    from it say they come from random weights.

    Examples
    --------
    >>> path = write_tiny_whisper_checkpoint(tmp_path / "whisper_tiny.pt", n_mels=128)
    >>> load_teacher("whisper", path).spec.dim
    128
    """
    import whisper.model

    unknown = sorted(set(dims) - set(TINY_DIMS))
    if unknown:
        raise ConfigError(f"whisper dims overrides must be among {sorted(TINY_DIMS)}. Got {unknown}.")
    model_dims = whisper.model.ModelDimensions(n_mels=n_mels, **{**TINY_DIMS, **dims})
    model = whisper.model.Whisper(model_dims)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(_random_value(name, param, generator))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"dims": model_dims.__dict__, "model_state_dict": model.state_dict(), RANDOM_INIT_KEY: True}, path)
    return path


def _random_value(name: str, param: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random weights with no LayerNorm left at identity, so every part of the network matters."""
    noise = torch.randn(param.shape, generator=generator)
    if "ln" in name.rsplit(".", 2)[-2] and name.endswith("weight"):
        return 1.0 + 0.2 * noise
    if param.ndim == 1:
        return 0.1 * noise
    return noise / param[0].numel() ** 0.5  # fan-in scaling keeps activations near unit size


__all__ = ["MODES", "WhisperOptions", "WhisperTeacher", "load_whisper_teacher",
           "write_tiny_whisper_checkpoint"]
