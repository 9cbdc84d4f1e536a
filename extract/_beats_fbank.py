"""Kaldi-compatible log-mel filterbank for BEATs, batched over padded waveforms.

BEATs was trained on ``torchaudio.compliance.kaldi.fbank`` features with the
Kaldi defaults (Povey window, pre-emphasis 0.97, DC removal, 512-point FFT,
128 mel bins from 20 Hz to Nyquist, natural log floored at float32 eps). This
module computes the same numbers in plain torch so that a whole padded batch
runs as one set of tensor ops, on CPU or GPU. Every frame depends only on its
own 400 samples, so a clip's frames inside a padded batch equal its frames
computed alone; callers keep only the first :func:`num_frames` rows of a clip.
"""

from __future__ import annotations

import functools
import math

import torch

from mt2kd.cuts import SAMPLE_RATE
from mt2kd.errors import ValidationError

FRAME_LENGTH = 400  # samples (25 ms at 16 kHz)
FRAME_SHIFT = 160  # samples (10 ms at 16 kHz)
NUM_FFT = 512  # FFT points: the frame length rounded up to a power of two
NUM_MEL_BINS = 128  # mel bands of the BEATs input
LOW_FREQ = 20.0  # Hz; lower edge of the first mel triangle (Kaldi default)
HIGH_FREQ = SAMPLE_RATE / 2  # Hz; Kaldi's high_freq=0 means the Nyquist frequency
PREEMPHASIS = 0.97  # Kaldi pre-emphasis coefficient
POVEY_POWER = 0.85  # the Povey window is a symmetric Hann window to this power
INT16_SCALE = 2.0**15  # BEATs feeds float audio scaled to the int16 range
FBANK_MEAN = 15.41663  # log-mel mean used at BEATs training time
FBANK_STD = 6.55582  # log-mel std used at BEATs training time
FBANK_SCALE = 2.0 * FBANK_STD  # BEATs divides by twice the std, as trained
LOG_FLOOR = torch.finfo(torch.float32).eps  # mel energies are floored here before the log


def num_frames(num_samples: int) -> int:
    """Frames Kaldi makes from ``num_samples`` (snip_edges: only whole windows).

    Examples
    --------
    >>> num_frames(48_000)
    298
    """
    if num_samples < FRAME_LENGTH:
        return 0
    return 1 + (num_samples - FRAME_LENGTH) // FRAME_SHIFT


def _mel(freq: torch.Tensor) -> torch.Tensor:
    """Kaldi's mel scale (natural log form)."""
    return 1127.0 * torch.log1p(freq / 700.0)


@functools.lru_cache(maxsize=8)
def _mel_banks_cpu() -> torch.Tensor:
    """Triangular mel weights [NUM_MEL_BINS, NUM_FFT // 2 + 1], built in float64.

    Kaldi spaces the triangles evenly on the mel scale between LOW_FREQ and
    HIGH_FREQ and evaluates them at FFT bins 0..NUM_FFT/2-1; the Nyquist bin
    always gets weight 0 (the extra zero column).
    """
    num_bins = NUM_FFT // 2
    mel_low = _mel(torch.tensor(LOW_FREQ, dtype=torch.float64))
    mel_high = _mel(torch.tensor(HIGH_FREQ, dtype=torch.float64))
    mel_step = (mel_high - mel_low) / (NUM_MEL_BINS + 1)
    band = torch.arange(NUM_MEL_BINS, dtype=torch.float64).unsqueeze(1)
    left = mel_low + band * mel_step
    center = left + mel_step
    right = center + mel_step
    fft_mel = _mel(torch.arange(num_bins, dtype=torch.float64) * (SAMPLE_RATE / NUM_FFT)).unsqueeze(0)
    rising = (fft_mel - left) / (center - left)
    falling = (right - fft_mel) / (right - center)
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0)
    return torch.nn.functional.pad(weights, (0, 1))


def _povey_window(device: torch.device) -> torch.Tensor:
    window = torch.hann_window(FRAME_LENGTH, periodic=False, dtype=torch.float64) ** POVEY_POWER
    return window.to(device=device, dtype=torch.float32)


def kaldi_fbank(waveforms: torch.Tensor) -> torch.Tensor:
    """Log-mel energies [B, T, 128] of float waveforms [B, N] already scaled to int16 range.

    ``T = num_frames(N)`` for the padded width ``N``; rows of a shorter clip
    beyond its own ``num_frames`` hold frames that overlap the padding.
    """
    if waveforms.ndim != 2 or waveforms.shape[1] < FRAME_LENGTH:
        raise ValidationError(
            f"fbank input must be [batch, samples] with at least {FRAME_LENGTH} samples. "
            f"Got shape {tuple(waveforms.shape)}."
        )
    x = waveforms.to(torch.float32)
    frames = x.unfold(1, FRAME_LENGTH, FRAME_SHIFT)  # [B, T, 400], a view: no copy yet
    frames = frames - frames.mean(dim=-1, keepdim=True)
    # Kaldi pre-emphasis treats the sample before the first as the first itself.
    previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
    frames = (frames - PREEMPHASIS * previous) * _povey_window(x.device)
    spectrum = torch.fft.rfft(frames, n=NUM_FFT, dim=-1)
    power = spectrum.real.square() + spectrum.imag.square()
    banks = _mel_banks_cpu().to(device=x.device, dtype=torch.float32)
    energies = torch.matmul(power, banks.T)
    return torch.log(torch.clamp(energies, min=LOG_FLOOR))


def beats_fbank(waveforms: torch.Tensor) -> torch.Tensor:
    """The normalised BEATs input [B, T, 128] from float waveforms in [-1, 1], shape [B, N].

    Examples
    --------
    >>> feats = beats_fbank(torch.zeros(1, 16_000))
    >>> feats.shape, round(float(feats[0, 0, 0]), 4)
    (torch.Size([1, 98, 128]), -2.3917)
    """
    log_mel = kaldi_fbank(waveforms.to(torch.float32) * INT16_SCALE)
    return (log_mel - FBANK_MEAN) / FBANK_SCALE


def normalised_log_floor() -> float:
    """The value a frame of digital silence takes after normalisation (about -2.39)."""
    return (math.log(LOG_FLOOR) - FBANK_MEAN) / FBANK_SCALE
