"""Student input features: 80-bin log-mel filterbank at 100 Hz.

One public function, :func:`compute_fbank`, so that training, evaluation and
anything else feeding the student compute exactly the same features. It uses
``torchaudio.compliance.kaldi`` (pure torch, no native extension).
"""

from __future__ import annotations

from typing import overload

import numpy as np
import torch

from mt2kd.cuts import SAMPLE_RATE
from mt2kd.errors import ValidationError

NUM_MEL_BINS = 80  # filterbank channels
FRAME_LENGTH_MS = 25.0  # ms, analysis window
FRAME_SHIFT_MS = 10.0  # ms, hop: 100 Hz frames
HOP_SAMPLES = 160  # samples per 10 ms hop at 16 kHz
WINDOW_SAMPLES = 400  # samples per 25 ms window at 16 kHz
INT16_SCALE = 32768.0  # Kaldi filterbanks expect int16-range samples
STUDENT_SUBSAMPLING = 4  # 100 Hz fbank -> 25 Hz encoder frames


def compute_fbank(waveform: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Log-mel filterbank of one 16 kHz mono waveform.

    Parameters
    ----------
    waveform:
        1-D float samples in [-1, 1] (or shape ``[1, N]``), 16 kHz.

    Returns
    -------
    torch.Tensor
        float32 ``[num_frames, 80]`` with ``num_frames = (N + 80) // 160``
        (frames centred on each 10 ms hop, no dither, so it is deterministic).

    Examples
    --------
    >>> compute_fbank(np.zeros(16_000, dtype=np.float32)).shape
    torch.Size([100, 80])
    """
    import torchaudio.compliance.kaldi as kaldi

    samples = torch.as_tensor(np.asarray(waveform) if not torch.is_tensor(waveform) else waveform)
    if samples.dim() == 2 and samples.shape[0] == 1:
        samples = samples[0]
    if samples.dim() != 1:
        raise ValidationError(f"waveform must be 1-D mono samples or [1, N]. Got shape {tuple(samples.shape)}.")
    num_samples = samples.shape[0]
    if num_samples == 0:
        raise ValidationError("waveform must hold at least one sample. Got an empty array.")
    num_frames = num_fbank_frames(num_samples)
    padded = samples.to(torch.float32)
    if num_samples < WINDOW_SAMPLES:  # kaldi needs one full window; keep the frame count rule anyway
        padded = torch.nn.functional.pad(padded, (0, WINDOW_SAMPLES - num_samples))
    feats = kaldi.fbank(
        padded[None] * INT16_SCALE,
        num_mel_bins=NUM_MEL_BINS,
        frame_length=FRAME_LENGTH_MS,
        frame_shift=FRAME_SHIFT_MS,
        dither=0.0,
        snip_edges=False,
        sample_frequency=SAMPLE_RATE,
    )
    return feats[:num_frames].contiguous()


def num_fbank_frames(num_samples: int) -> int:
    """Frames :func:`compute_fbank` returns for ``num_samples`` samples (at least 1)."""
    return max(1, (num_samples + HOP_SAMPLES // 2) // HOP_SAMPLES)


@overload
def num_student_frames(num_fbank: int) -> int: ...


@overload
def num_student_frames(num_fbank: torch.Tensor) -> torch.Tensor: ...


def num_student_frames(num_fbank: int | torch.Tensor) -> int | torch.Tensor:
    """25 Hz encoder frames after the two stride-2 convolutions of the front-end.

    Each convolution (kernel 3, padding 1, stride 2) maps ``t`` frames to
    ``(t + 1) // 2``.
    """
    once = (num_fbank + 1) // 2
    return (once + 1) // 2
