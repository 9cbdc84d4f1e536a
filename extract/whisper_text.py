"""The whisper-text teacher: each cut's transcript by openai-whisper's own decoding, stored as text.

Each cut is cut into 30 s windows (``_frames.window_bounds``, as the whisper
frames teacher does); each window is padded to 30 s, turned into whisper's
log-mel and decoded by ``whisper.decode`` with the teacher's options
(``task``, ``language``: detected per window when empty, greedy unless
``beam_size`` > 1, no timestamps); the windows' texts, stripped, are
joined by one space. All windows of a batch go to one ``whisper.decode``
call. The teacher returns each transcript as a uint8 array of its UTF-8
bytes (the store's ``text`` kind); ``mt2kd store export-text`` turns a
store of them into a CutSet with those supervisions.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mt2kd.errors import CheckpointError, CheckpointNotFoundError, ConfigError
from mt2kd.extract._frames import window_bounds
from mt2kd.extract._teacher import Teacher, register_teacher
from mt2kd.extract._whisper_model import RANDOM_INIT_KEY, pad_to_window
from mt2kd.store import TeacherSpec

TASKS = ("transcribe", "translate")
PRECISIONS = ("fp32", "fp16")  # whisper decodes in float32 or float16 (CUDA), never bf16
BEAM_SORT_WARNING = "__array_wrap__ must accept context"  # numpy 2's warning in whisper's beam search
RANDOM_NOTE = "random weights: the transcripts are meaningless token sequences, for tests only"


@dataclasses.dataclass(frozen=True)
class WhisperTextOptions:
    """How the whisper-text teacher decodes."""

    language: str = ""  # whisper language code ("en", "de", ...); "" detects it per 30 s window
    task: str = "transcribe"  # "transcribe" (same language) or "translate" (to English)
    beam_size: int = 0  # 0 or 1: greedy; N > 1: beam search of N beams

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"whisper-text task must be one of {list(TASKS)}. Got {self.task!r}.")
        if not isinstance(self.beam_size, int) or self.beam_size < 0:
            raise ConfigError(f"whisper-text beam_size must be an int >= 0 (0: greedy). Got {self.beam_size!r}.")
        if self.language:
            from whisper.tokenizer import LANGUAGES, TO_LANGUAGE_CODE

            if self.language not in LANGUAGES and self.language.lower() not in TO_LANGUAGE_CODE:
                raise ConfigError(f"whisper-text language must be a whisper language code such as 'en' or "
                                  f"'de' (or '' to detect it). Got {self.language!r}.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def decoding(self, fp16: bool) -> Any:
        """The ``whisper.DecodingOptions`` of these options."""
        import whisper

        return whisper.DecodingOptions(task=self.task, language=self.language or None,
                                       beam_size=self.beam_size if self.beam_size > 1 else None,
                                       without_timestamps=True, fp16=fp16)


class WhisperTextTeacher(Teacher):
    """Frozen whisper (encoder and decoder); ``extract`` gives each cut's transcript as UTF-8 bytes."""

    name = "whisper-text"

    def __init__(self, checkpoint: str | Path, options: dict[str, Any], precision: str = "fp32") -> None:
        if precision not in PRECISIONS:
            raise ConfigError(f"whisper-text precision must be one of {list(PRECISIONS)}. Got {precision!r}.")
        self.config = WhisperTextOptions(**options)
        super().__init__(checkpoint, {**self.config.to_dict(), "precision": precision}, precision)
        self.model, self.dims, self.random_init = load_whisper_model(self.checkpoint)

    @property
    def spec(self) -> TeacherSpec:
        config: dict[str, Any] = {**self.options, "dims": dict(self.dims), "random_init": self.random_init}
        if self.random_init:
            config["note"] = RANDOM_NOTE
        return TeacherSpec(self.name, "text", 1, fingerprint=self.fingerprint, config=config)

    def _to(self, device: str) -> None:
        if self.precision == "fp16" and not device.startswith("cuda"):
            raise ConfigError(f"whisper-text: precision 'fp16' needs a CUDA device. Got device {device!r}; use "
                              f"precision 'fp32' on CPU.")
        self.model.to(device)

    def _extract(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        bounds = [window_bounds(len(w)) for w in waveforms]
        windows = [np.asarray(w[s:e], dtype=np.float32) for w, b in zip(waveforms, bounds) for s, e in b]
        texts = decode_windows(self.model, windows, self.dims["n_mels"], self.config, self.precision == "fp16",
                               self.device) if windows else []
        outputs, start = [], 0
        for cut_bounds in bounds:
            parts = [t.strip() for t in texts[start: start + len(cut_bounds)]]
            start += len(cut_bounds)
            text = " ".join(p for p in parts if p)
            outputs.append(np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy())
        return outputs


def decode_windows(model: Any, windows: list[np.ndarray], n_mels: int, options: WhisperTextOptions, fp16: bool,
                   device: str) -> list[str]:
    """``whisper.decode`` of each window (padded to 30 s), in one call; the texts as whisper gives them."""
    import whisper

    mel = torch.stack([whisper.log_mel_spectrogram(torch.from_numpy(pad_to_window(w)), n_mels) for w in windows])
    with torch.inference_mode(), warnings.catch_warnings():
        # whisper's beam search sorts a torch tensor with numpy, which numpy 2 warns about on every call
        warnings.filterwarnings("ignore", BEAM_SORT_WARNING, DeprecationWarning)
        results = whisper.decode(model, mel.to(device), options.decoding(fp16))
    return [r.text for r in results]


def load_whisper_model(path: Path) -> tuple[Any, dict[str, int], bool]:
    """The whole openai-whisper model of a local ``.pt`` (as ``whisper.load_model`` builds it), float32, eval."""
    import whisper.model

    if not path.is_file():
        raise CheckpointNotFoundError(f"whisper-text checkpoint must be an existing openai-whisper .pt file. "
                                      f"Got {str(path)!r}; nothing is downloaded at run time.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        dims = whisper.model.ModelDimensions(**checkpoint["dims"])
        model = whisper.model.Whisper(dims)
        model.load_state_dict(checkpoint["model_state_dict"])
    except Exception as e:  # torch.load, the dims and load_state_dict raise many types for a bad file
        raise CheckpointError(f"whisper-text checkpoint {str(path)!r} must be an openai-whisper .pt holding "
                              f"'dims' and 'model_state_dict' of the whole model. Got a file that does not load: "
                              f"{type(e).__name__}: {' '.join(str(e).split())[:400]}") from e
    model.float().eval().requires_grad_(False)
    _load_tokenizer(model)
    return model, dict(dims.__dict__), bool(checkpoint.get(RANDOM_INIT_KEY, False))


def _load_tokenizer(model: Any) -> None:
    """Read whisper's tokenizer file now (whisper caches it), without the ResourceWarning of its unclosed file."""
    import whisper.tokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # whisper's get_encoding never closes the vocabulary file
        whisper.tokenizer.get_tokenizer(model.is_multilingual, num_languages=model.num_languages)


@register_teacher("whisper-text")
def load_whisper_text_teacher(checkpoint: str | Path, language: str = "", task: str = "transcribe",
                              beam_size: int = 0, precision: str = "fp32") -> WhisperTextTeacher:
    """Load the whisper-text teacher from a local openai-whisper ``.pt`` (the whole model).

    Parameters
    ----------
    checkpoint : openai-whisper checkpoint, e.g. large-v3.pt.
    language : whisper language code, or "" to detect it per 30 s window.
    task : "transcribe" or "translate".
    beam_size : 0 for greedy decoding, N > 1 for beam search.
    precision : "fp32", or "fp16" (CUDA only).

    Examples
    --------
    >>> teacher = load_teacher("whisper-text", "large-v3.pt", language="en")
    >>> bytes(teacher.extract([speech])[0]).decode()
    'hello world'
    """
    return WhisperTextTeacher(checkpoint, {"language": language, "task": task, "beam_size": beam_size}, precision)


TINY_TEXT_DIMS: dict[str, int] = {"n_vocab": 51865, "n_text_ctx": 32}  # the multilingual tokenizer's vocabulary


def write_tiny_whisper_text_checkpoint(path: str | Path, seed: int = 0) -> Path:
    """A random-weight whisper ``.pt`` whose decoder has the real multilingual vocabulary, so it decodes."""
    from mt2kd.extract.whisper import write_tiny_whisper_checkpoint

    return write_tiny_whisper_checkpoint(path, n_mels=80, seed=seed, **TINY_TEXT_DIMS)


__all__ = ["WhisperTextOptions", "WhisperTextTeacher", "decode_windows", "load_whisper_text_teacher",
           "write_tiny_whisper_text_checkpoint"]
