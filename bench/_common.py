"""Shared pieces of the benchmarks: synthetic teacher outputs, timing, tables.

The synthetic data imitates what the teachers emit closely enough that
compression ratios and read costs mean something:

- cut durations follow a LibriSpeech-like spread (1-35 s, mean about 12.3 s);
- whisper-like frames are 25 Hz, 2560-D, roughly gaussian per dimension with
  a per-dimension offset and scale (a few dimensions much larger, as in real
  encoder outputs), and correlated in time (AR(1) per dimension), so they are
  neither white noise (incompressible) nor constant (trivially compressible);
- clip logits (527-D) and embeddings (192-D) are gaussian with offsets.

Nothing here imports torch; benchmarks that need it import it themselves.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

SAMPLE_RATE = 16_000  # Hz, teacher input audio
HOP_SAMPLES = 160  # samples per 10 ms log-mel hop
WHISPER_DIM = 2560  # two stacked 1280-D whisper-large frames
WHISPER_FRAME_RATE = 25.0  # Hz, after stacking two 50 Hz frames
BEATS_DIM = 527  # AudioSet classes
ECAPA_DIM = 192  # speaker embedding size

MIN_DURATION = 1.0  # s, shortest cut
MAX_DURATION = 35.0  # s, longest cut (LibriSpeech train tops out near 35 s)
MEAN_DURATION = 12.3  # s, LibriSpeech train mean
# LibriSpeech-like mixture: most cuts near 13.5 s (the segmenter's target), a flat
# shoulder of short cuts and a thin tail of long ones; mean about 12.3 s
BULK_SHARE, BULK_MEAN, BULK_STD = 0.68, 13.5, 1.5  # fraction, s, s
SHORT_SHARE, SHORT_MAX = 0.27, 13.0  # fraction, s (uniform from MIN_DURATION)
LONG_MIN = 16.0  # s, the long tail is uniform up to MAX_DURATION

FRAME_CORRELATION = 0.85  # AR(1) coefficient between successive 25 Hz frames
NUM_LOUD_DIMS = 8  # dimensions with a much larger scale, as real encoders have
MIB = 1024 * 1024  # bytes


def num_stacked_frames(duration: float) -> int:
    """25 Hz whisper frames for a cut: mel = samples // 160, 50 Hz = (mel + 1) // 2, 25 Hz = 50 Hz // 2."""
    num_samples = int(round(duration * SAMPLE_RATE))
    num_mel = num_samples // HOP_SAMPLES
    return ((num_mel + 1) // 2) // 2


def sample_durations(total_hours: float, seed: int) -> np.ndarray:
    """Cut durations (s) adding up to about ``total_hours``, LibriSpeech-like.

    Example
    -------
    >>> d = sample_durations(0.1, seed=0)
    >>> 1.0 <= d.min() and d.max() <= 35.0
    True
    """
    rng = np.random.default_rng(seed)
    total_s = total_hours * 3600.0
    num_cuts = max(2, int(np.ceil(total_s / MEAN_DURATION)))
    which = rng.random(num_cuts)
    durations = np.where(
        which < BULK_SHARE, rng.normal(BULK_MEAN, BULK_STD, num_cuts),
        np.where(which < BULK_SHARE + SHORT_SHARE, rng.uniform(MIN_DURATION, SHORT_MAX, num_cuts),
                 rng.uniform(LONG_MIN, MAX_DURATION, num_cuts)))
    # round to 10 ms like real manifests
    return np.round(np.clip(durations, MIN_DURATION, MAX_DURATION), 2)


def make_cut_ids(num_cuts: int) -> list[str]:
    """LibriSpeech-style cut IDs (speaker-chapter-utterance)."""
    return [f"{1000 + i // 400}-{100000 + (i // 40) % 10}-{i % 40:04d}" for i in range(num_cuts)]


@dataclasses.dataclass(frozen=True)
class FrameStats:
    """Per-dimension statistics shared by every cut of one synthetic teacher."""

    offset: np.ndarray  # [dim] mean of each dimension
    scale: np.ndarray  # [dim] standard deviation of each dimension
    correlation: float  # AR(1) coefficient between successive frames


def make_frame_stats(dim: int, seed: int) -> FrameStats:
    rng = np.random.default_rng(seed)
    offset = rng.normal(0.0, 0.3, size=dim)
    scale = rng.lognormal(mean=-0.5, sigma=0.4, size=dim)
    loud = rng.choice(dim, size=min(NUM_LOUD_DIMS, dim), replace=False)
    scale[loud] *= 20.0
    offset[loud] *= 20.0
    return FrameStats(offset=offset, scale=scale, correlation=FRAME_CORRELATION)


def make_frames(num_frames: int, stats: FrameStats, rng: np.random.Generator) -> np.ndarray:
    """One cut of temporally correlated frames, float32 ``[num_frames, dim]``."""
    from scipy.signal import lfilter

    dim = stats.offset.shape[0]
    noise = rng.standard_normal((num_frames, dim))
    rho = stats.correlation
    # AR(1) x[t] = rho x[t-1] + sqrt(1 - rho^2) e[t] keeps unit variance
    smooth = lfilter([np.sqrt(1.0 - rho * rho)], [1.0, -rho], noise, axis=0)
    return (smooth * stats.scale + stats.offset).astype(np.float32)


def make_clip(dim: int, offset: float, rng: np.random.Generator) -> np.ndarray:
    """One clip-level vector, float32 ``[dim]`` (logits: negative offset; embeddings: around 0)."""
    return (rng.standard_normal(dim) * 2.0 + offset).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class SyntheticCorpus:
    """Cut IDs, durations and one teacher's frames for every cut."""

    cut_ids: list[str]  # unique, in corpus order
    durations: np.ndarray  # [num_cuts] seconds
    frames: list[np.ndarray]  # float32 [num_frames, dim] per cut

    @property
    def num_frames(self) -> int:
        return sum(f.shape[0] for f in self.frames)

    @property
    def hours(self) -> float:
        return float(self.durations.sum()) / 3600.0

    @property
    def float32_bytes(self) -> int:
        return sum(f.nbytes for f in self.frames)


def make_whisper_corpus(hours: float, seed: int, dim: int = WHISPER_DIM) -> SyntheticCorpus:
    """Whisper-like frames for about ``hours`` of audio, deterministic in ``seed``."""
    durations = sample_durations(hours, seed)
    stats = make_frame_stats(dim, seed + 1)
    rng = np.random.default_rng(seed + 2)
    frames = [make_frames(num_stacked_frames(d), stats, rng) for d in durations]
    return SyntheticCorpus(make_cut_ids(len(durations)), durations, frames)


# ---------------------------------------------------------------- timing


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Run ``fn`` once; return its result and the wall time in seconds."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def batches(items: Sequence[str], batch_size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), batch_size):
        yield list(items[start:start + batch_size])


def dir_bytes(path: Any) -> int:
    """Bytes on disk of a file or of every file below a folder."""
    from pathlib import Path

    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


# ---------------------------------------------------------------- tables


def ratio(value: float | None, anchor: float | None) -> str:
    if value is None or not anchor:
        return "-"
    return f"{value / anchor:.2f}x"


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[str(c) for c in header]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        first = row[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        return "  ".join([first, *rest])

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)
