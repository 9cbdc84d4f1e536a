"""Frame arithmetic of the whisper teacher, in one place.

Whisper turns 16 kHz audio into log-mel frames every 10 ms, its stride-2
convolution halves that to 50 Hz, and mt2kd concatenates ``stack``
successive 50 Hz frames (25 Hz for the default ``stack=2``). The extraction
planner uses these counts to predict what a cut will produce, the whisper
teacher to cut and window its inputs, and training to align student frames.

Examples
--------
>>> num_stacked_frames(16_000)          # one second
25
>>> num_stacked_frames(30 * 16_000)     # one whole whisper window
750
"""

from __future__ import annotations

from mt2kd.cuts import SAMPLE_RATE

HOP_SAMPLES = 160  # samples per log-mel frame (10 ms)
MEL_RATE = SAMPLE_RATE // HOP_SAMPLES  # Hz, log-mel frames per second (100)
CONV_STRIDE = 2  # whisper's second convolution halves the frame rate
ENCODER_RATE = MEL_RATE // CONV_STRIDE  # Hz, whisper encoder frames per second (50)
WINDOW_SECONDS = 30  # s, whisper's native input length
WINDOW_SAMPLES = WINDOW_SECONDS * SAMPLE_RATE  # samples in one whisper window (480,000)
WINDOW_MEL_FRAMES = WINDOW_SAMPLES // HOP_SAMPLES  # log-mel frames in one window (3,000)
WINDOW_ENCODER_FRAMES = WINDOW_MEL_FRAMES // CONV_STRIDE  # 50 Hz frames in one window (1,500)
DEFAULT_STACK = 2  # 50 Hz frames concatenated into one stored frame


def num_mel_frames(num_samples: int) -> int:
    """Log-mel frames of ``num_samples`` samples: ``samples // 160`` (whisper drops the last STFT frame)."""
    return max(0, num_samples) // HOP_SAMPLES


def num_encoder_frames(num_samples: int) -> int:
    """50 Hz encoder frames: ``(mel + 1) // 2``, the output length of the stride-2, padding-1 convolution."""
    return (num_mel_frames(num_samples) + 1) // CONV_STRIDE


def num_stacked_frames(num_samples: int, stack: int = DEFAULT_STACK) -> int:
    """Stored frames of a cut: ``encoder frames // stack`` (a trailing partial stack is dropped)."""
    return num_encoder_frames(num_samples) // stack


def stacked_frame_rate(stack: int = DEFAULT_STACK) -> float:
    """Hz of the stored frames: ``50 / stack`` (25.0 for the default)."""
    return ENCODER_RATE / stack


def num_stacked_frames_for_duration(duration: float, stack: int = DEFAULT_STACK) -> int:
    """Stored frames of a cut of ``duration`` seconds (samples rounded to the nearest integer, as lhotse does)."""
    return num_stacked_frames(int(round(duration * SAMPLE_RATE)), stack)


def min_num_samples(stack: int = DEFAULT_STACK) -> int:
    """Fewest samples that give one stored frame: ``2 * stack - 1`` mel frames of 160 samples."""
    return (CONV_STRIDE * stack - 1) * HOP_SAMPLES


def window_bounds(num_samples: int) -> list[tuple[int, int]]:
    """Sample ranges of the 30 s windows a cut is encoded in, ``[(start, end), ...]``.

    Every window but the last is exactly 30 s; the last holds the rest. A tail
    too short for one 50 Hz frame (under 160 samples) adds no window, since it
    adds no frame. Because a full window has an even number of mel frames
    (3,000), the 50 Hz frames of the windows add up to
    ``num_encoder_frames(num_samples)`` exactly.

    Examples
    --------
    >>> window_bounds(65 * 16_000)
    [(0, 480000), (480000, 960000), (960000, 1040000)]
    """
    bounds = []
    for start in range(0, max(0, num_samples), WINDOW_SAMPLES):
        end = min(start + WINDOW_SAMPLES, num_samples)
        if num_encoder_frames(end - start) > 0:
            bounds.append((start, end))
    return bounds
