"""The ECAPA-TDNN teacher: one 192-D speaker embedding per cut, as if each cut ran alone.

Reads a speechbrain ``spkrec-ecapa-voxceleb`` pretrained folder
(``hyperparams.yaml`` + ``embedding_model.ckpt``; the classifier files are not
needed for embeddings). The yaml is only read for its numbers: no object it
describes is built through speechbrain's ``!new:`` machinery and its
``pretrained_path`` (the hub id in the released file) is ignored, because the
weights always come from the folder itself. The modules are speechbrain's own
``Fbank``, ``InputNormalization`` (per-sentence mean) and ``ECAPA_TDNN``, so the
embedding equals ``EncoderClassifier.encode_batch`` on the same weights.

Batching: speechbrain's padded batches are not batch invariant (the
convolutions reflect-pad at the batch's end rather than the cut's, and the
relative-length masks round differently), so cuts are batched only with cuts
of the same number of fbank frames (``1 + samples // 160``). Zero-padding a
cut up to the longest of such a group leaves its frames unchanged, because the
STFT already centres frames on zero padding, so the batch needs no mask at all.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mt2kd._typed import from_dict
from mt2kd.errors import CheckpointError, CheckpointNotFoundError, ConfigError, ValidationError
from mt2kd.extract._ecapa_yaml import HYPERPARAMS_FILE, read_hyperparams
from mt2kd.extract._teacher import Teacher, register_teacher
from mt2kd.extract._tiny import checkpoint_is_random
from mt2kd.store import TeacherSpec

__all__ = ["EcapaConfig", "EcapaEncoder", "EcapaTeacher", "equal_key_batches", "load_ecapa",
           "load_ecapa_encoder", "read_ecapa_config", "EMBEDDING_FILE"]

EMBEDDING_FILE = "embedding_model.ckpt"  # the ECAPA_TDNN state dict inside the folder
DEFAULT_MAX_BATCH_SIZE = 32  # cuts of equal frame count per forward pass
NUM_SHOWN_KEYS = 5  # how many missing/unexpected keys an error message lists
ACTIVATIONS = ("ReLU", "LeakyReLU")  # torch.nn activations the yaml may name


@dataclasses.dataclass(frozen=True)
class EcapaConfig:
    """Sizes of the speechbrain Fbank + ECAPA_TDNN pair; defaults are speechbrain's own.

    Examples
    --------
    >>> EcapaConfig(n_mels=80, channels=(1024, 1024, 1024, 1024, 3072)).lin_neurons
    192
    """

    sample_rate: int = 16_000  # Hz; Fbank input rate
    n_mels: int = 40  # mel bins of the Fbank (the released yaml says 80)
    n_fft: int = 400  # STFT size in samples
    win_length: int = 25  # ms; STFT window
    hop_length: int = 10  # ms; STFT hop (100 frames per second)
    f_min: int = 0  # Hz; lowest mel filter edge
    f_max: int | None = None  # Hz; highest mel filter edge (None: sample_rate // 2)
    std_norm: bool = False  # whether sentence normalisation also divides by the std
    channels: tuple[int, ...] = (512, 512, 512, 512, 1536)  # TDNN, SE-Res2Net x3, MFA output channels
    kernel_sizes: tuple[int, ...] = (5, 3, 3, 3, 1)  # kernel size per block
    dilations: tuple[int, ...] = (1, 2, 3, 4, 1)  # dilation per block
    attention_channels: int = 128  # hidden size of the attentive statistics pooling
    lin_neurons: int = 192  # embedding dimension
    res2net_scale: int = 8  # Res2Net splits per SE-Res2Net block
    se_channels: int = 128  # squeeze size of the squeeze-excitation blocks
    global_context: bool = True  # pooling attention also sees the utterance mean and std
    groups: tuple[int, ...] = (1, 1, 1, 1, 1)  # convolution groups per block
    activation: str = "ReLU"  # torch.nn activation class name, one of ACTIVATIONS

    def __post_init__(self) -> None:
        num_blocks = len(self.channels)
        for field in ("kernel_sizes", "dilations", "groups"):
            if len(getattr(self, field)) != num_blocks:
                raise ConfigError(f"ECAPA {field} must have one entry per block ({num_blocks}). "
                                  f"Got {list(getattr(self, field))}.")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"ECAPA activation must be one of {list(ACTIVATIONS)}. Got {self.activation!r}.")

    @property
    def hop_samples(self) -> int:
        """STFT hop in samples (160 at 16 kHz)."""
        return self.sample_rate * self.hop_length // 1000

    def num_frames(self, num_samples: int) -> int:
        """Fbank frames of a cut: the STFT centres one frame on every hop."""
        return 1 + num_samples // self.hop_samples

    @property
    def min_num_samples(self) -> int:
        """Fewest samples the model accepts: its widest reflect padding needs one more frame."""
        widest_pad = max(d * (k - 1) // 2 for k, d in zip(self.kernel_sizes, self.dilations))
        return widest_pad * self.hop_samples  # frames = 1 + samples // hop

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EcapaConfig:
        return from_dict(cls, data)


def read_ecapa_config(folder: str | Path) -> EcapaConfig:
    """Read the model sizes from a pretrained folder's ``hyperparams.yaml`` (nothing is built or fetched).

    Examples
    --------
    >>> read_ecapa_config("spkrec-ecapa-voxceleb").channels
    (1024, 1024, 1024, 1024, 3072)
    """
    path = Path(folder) / HYPERPARAMS_FILE
    try:
        return EcapaConfig.from_dict(read_hyperparams(path))
    except ConfigError as e:
        raise CheckpointError(f"ECAPA {str(path)!r}: {e}") from e


class EcapaEncoder(torch.nn.Module):
    """speechbrain's Fbank -> sentence mean normalisation -> ECAPA_TDNN, on unmasked batches.

    Every row of a batch is used whole (relative length 1), so a batch must
    hold cuts of one frame count, zero-padded to its longest (see the module notes).
    """

    def __init__(self, config: EcapaConfig) -> None:
        super().__init__()
        from speechbrain.lobes.features import Fbank
        from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
        from speechbrain.processing.features import InputNormalization

        self.config = config
        self.compute_features = Fbank(
            sample_rate=config.sample_rate, n_fft=config.n_fft, n_mels=config.n_mels,
            win_length=config.win_length, hop_length=config.hop_length, f_min=config.f_min, f_max=config.f_max)
        self.mean_var_norm = InputNormalization(norm_type="sentence", std_norm=config.std_norm)
        self.embedding_model = ECAPA_TDNN(
            config.n_mels, lin_neurons=config.lin_neurons, activation=getattr(torch.nn, config.activation),
            channels=list(config.channels), kernel_sizes=list(config.kernel_sizes),
            dilations=list(config.dilations), attention_channels=config.attention_channels,
            res2net_scale=config.res2net_scale, se_channels=config.se_channels,
            global_context=config.global_context, groups=list(config.groups))

    def features(self, wavs: torch.Tensor) -> torch.Tensor:
        """Normalised fbank ``[batch, frames, n_mels]`` of float32 waveforms ``[batch, samples]``."""
        lengths = torch.ones(wavs.shape[0], device=wavs.device)  # whole rows: every frame is the cut's
        return self.mean_var_norm(self.compute_features(wavs), lengths)

    def embed(self, feats: torch.Tensor) -> torch.Tensor:
        """Unnormalised embeddings ``[batch, lin_neurons]`` of ``features`` output."""
        lengths = torch.ones(feats.shape[0], device=feats.device)
        return self.embedding_model(feats, lengths).squeeze(1)

    def forward(self, wavs: torch.Tensor) -> torch.Tensor:
        return self.embed(self.features(wavs))


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointNotFoundError(f"ECAPA {str(path)!r} must exist: the ECAPA_TDNN state dict of a "
                                      f"speechbrain pretrained folder. Got no such file.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for non-checkpoint bytes
        raise CheckpointError(f"ECAPA {str(path)!r} must be a torch state dict loadable with "
                              f"weights_only=True. Got {type(e).__name__}: {e}") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"ECAPA {str(path)!r} must hold a dict of tensors. Got {type(state).__name__}.")
    return state


def _load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    # BatchNorm step counters do not change the eval-mode output; older checkpoints may lack them
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"ECAPA {str(path)!r} must hold the {len(expected)} ECAPA_TDNN tensors of the sizes in "
            f"{HYPERPARAMS_FILE}. Got {len(missing)} missing (first: {missing[:NUM_SHOWN_KEYS]}) and "
            f"{len(unexpected)} unexpected (first: {unexpected[:NUM_SHOWN_KEYS]}).")
    wrong = [f"{k}: {tuple(state[k].shape)} (expected {tuple(v.shape)})"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f"ECAPA {str(path)!r}: tensor shapes must match the sizes in {HYPERPARAMS_FILE}. "
                              f"Got {wrong[:NUM_SHOWN_KEYS]}.")
    model.load_state_dict(state, strict=False)


def load_ecapa_encoder(folder: str | Path) -> EcapaEncoder:
    """Build the encoder from a pretrained folder and load its weights (eval mode, frozen).

    Examples
    --------
    >>> encoder = load_ecapa_encoder("spkrec-ecapa-voxceleb")
    >>> encoder(torch.zeros(1, 16_000)).shape
    torch.Size([1, 192])
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointNotFoundError(f"ECAPA checkpoint {str(folder)!r} must be a speechbrain pretrained "
                                      f"folder ({HYPERPARAMS_FILE} + {EMBEDDING_FILE}). Got no such folder.")
    encoder = EcapaEncoder(read_ecapa_config(folder))
    _load_weights(encoder.embedding_model, _read_state_dict(folder / EMBEDDING_FILE), folder / EMBEDDING_FILE)
    encoder.eval().requires_grad_(False)
    return encoder


def equal_key_batches(keys: Sequence[int], max_batch_size: int) -> list[list[int]]:
    """Group input indices into batches of identical key (first-seen order, at most ``max_batch_size``).

    Examples
    --------
    >>> equal_key_batches([5, 3, 5, 5], max_batch_size=2)
    [[0, 2], [3], [1]]
    """
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(keys):
        groups.setdefault(n, []).append(i)
    return [rows[start:start + max_batch_size] for rows in groups.values()
            for start in range(0, len(rows), max_batch_size)]


class EcapaTeacher(Teacher):
    """Frozen ECAPA-TDNN; ``extract`` gives one float32 [lin_neurons] embedding per cut."""

    name = "ecapa"

    def __init__(self, checkpoint: str | Path, options: dict[str, Any], precision: str = "fp32",
                 max_batch_size: int = DEFAULT_MAX_BATCH_SIZE) -> None:
        super().__init__(checkpoint, options, precision)
        if not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ConfigError(f"ecapa max_batch_size must be a positive int. Got {max_batch_size!r}.")
        # Not an option: outputs do not depend on batching, so it stays out of the fingerprint
        self.max_batch_size = max_batch_size
        self.encoder = load_ecapa_encoder(self.checkpoint)
        self.config = self.encoder.config
        self.random_init = checkpoint_is_random(self.checkpoint)

    @property
    def spec(self) -> TeacherSpec:
        config = {**self.options, "random_init": self.random_init, "model": self.config.to_dict()}
        return TeacherSpec(self.name, "clip", self.config.lin_neurons, dtype="float32",
                           fingerprint=self.fingerprint, config=config)

    def _to(self, device: str) -> None:
        self.encoder.to(device)

    def _prepare(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        minimum = self.config.min_num_samples
        for i, w in enumerate(waveforms):
            if len(w) < minimum:
                raise ValidationError(f"ecapa: waveform {i} must have at least {minimum} samples "
                                      f"({minimum / self.config.sample_rate:.3f} s). Got {len(w)}.")
            if not np.all(np.isfinite(w)):
                raise ValidationError(f"ecapa: waveform {i} must hold finite samples. Got NaN or inf.")
        return [np.asarray(w, dtype=np.float32) for w in waveforms]

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        if not self.device.startswith("cuda"):
            raise ConfigError(f"ecapa: precision {self.precision!r} needs a CUDA device. Got {self.device!r}.")
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast("cuda", dtype=dtype)

    @torch.inference_mode()
    def _extract(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        clips = self._prepare(waveforms)
        out: list[np.ndarray] = [np.empty(0, np.float32)] * len(clips)
        num_frames = [self.config.num_frames(len(c)) for c in clips]
        for rows in equal_key_batches(num_frames, self.max_batch_size):
            wavs = torch.zeros(len(rows), max(len(clips[i]) for i in rows))
            for row, i in zip(wavs, rows):
                row[: len(clips[i])] = torch.from_numpy(clips[i])
            wavs = wavs.to(self.device)
            feats = self.encoder.features(wavs)  # always float32: log-mel precision matters
            with self._autocast():
                embeddings = self.encoder.embed(feats)
            for i, e in zip(rows, embeddings.float().cpu().numpy()):
                out[i] = e
        return out


@register_teacher("ecapa")
def load_ecapa(checkpoint: str | Path, precision: str = "fp32",
               max_batch_size: int = DEFAULT_MAX_BATCH_SIZE) -> EcapaTeacher:
    """Load the ECAPA-TDNN teacher from a local speechbrain ``spkrec-ecapa-voxceleb`` folder.

    Parameters
    ----------
    checkpoint : folder with ``hyperparams.yaml`` and ``embedding_model.ckpt``.
    precision : "fp32", or "bf16"/"fp16" autocast (CUDA only; the fbank stays float32).
    max_batch_size : most cuts of the same number of fbank frames encoded in one pass.

    Examples
    --------
    >>> teacher = load_teacher("ecapa", "spkrec-ecapa-voxceleb").to("cuda")
    >>> teacher.extract([np.zeros(16_000, np.float32)])[0].shape
    (192,)
    """
    # Precision is an option so that it enters the fingerprint: bf16 embeddings are not fp32 ones.
    return EcapaTeacher(checkpoint, {"precision": precision}, precision, max_batch_size)
