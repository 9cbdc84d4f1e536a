"""Frame arithmetic against what whisper's own code produces."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mt2kd.extract._frames import (
    HOP_SAMPLES,
    WINDOW_SAMPLES,
    min_num_samples,
    num_encoder_frames,
    num_mel_frames,
    num_stacked_frames,
    num_stacked_frames_for_duration,
    stacked_frame_rate,
    window_bounds,
)

# around frame and window edges, where off-by-one errors live
LENGTHS = [201, 319, 320, 321, 479, 480, 481, 639, 640, 16_000, 16_159, 16_160, 16_161, 123_457]
LONG_TAILS = [0, 1, 159, 160, 161, 319, 320, 479, 480, 16_000, WINDOW_SAMPLES - 1]


@pytest.mark.parametrize("num_samples", LENGTHS)
def test_mel_frames_match_whisper_log_mel(num_samples: int) -> None:
    import whisper.audio

    mel = whisper.audio.log_mel_spectrogram(torch.zeros(num_samples), n_mels=80)
    assert mel.shape[-1] == num_mel_frames(num_samples)


@pytest.mark.parametrize("num_samples", LENGTHS)
def test_encoder_frames_match_whisper_convolutions(num_samples: int) -> None:
    mel = torch.zeros(1, 1, num_mel_frames(num_samples))
    kernel = torch.ones(1, 1, 3)
    after_conv1 = F.conv1d(mel, kernel, padding=1)  # whisper's conv1: kernel 3, padding 1
    after_conv2 = F.conv1d(after_conv1, kernel, stride=2, padding=1)  # conv2: stride 2
    assert after_conv2.shape[-1] == num_encoder_frames(num_samples)


@pytest.mark.parametrize("stack", [1, 2, 3, 7])
def test_stacked_frames_drop_only_a_partial_stack(stack: int) -> None:
    for num_samples in LENGTHS:
        n50 = num_encoder_frames(num_samples)
        num_frames = num_stacked_frames(num_samples, stack)
        assert num_frames * stack <= n50 < (num_frames + 1) * stack


@pytest.mark.parametrize("stack", [1, 2, 3, 7])
def test_min_num_samples_is_the_first_length_with_a_frame(stack: int) -> None:
    minimum = min_num_samples(stack)
    assert num_stacked_frames(minimum - 1, stack) == 0
    assert num_stacked_frames(minimum, stack) == 1


def test_frame_rate_and_durations() -> None:
    assert stacked_frame_rate(2) == 25.0
    assert stacked_frame_rate(1) == 50.0
    one_second = num_stacked_frames_for_duration(1.0)
    assert one_second == num_stacked_frames(16_000) and one_second * 1.0 == stacked_frame_rate(2)
    assert num_stacked_frames(0) == 0 and num_stacked_frames(-5) == 0


@pytest.mark.parametrize("num_windows", [0, 1, 2])
@pytest.mark.parametrize("tail", LONG_TAILS)
def test_windows_cover_the_cut_and_keep_its_frame_count(num_windows: int, tail: int) -> None:
    num_samples = num_windows * WINDOW_SAMPLES + tail
    bounds = window_bounds(num_samples)
    assert all(end - start <= WINDOW_SAMPLES for start, end in bounds)
    assert all(bounds[i][1] == bounds[i + 1][0] for i in range(len(bounds) - 1))
    if bounds:
        assert bounds[0][0] == 0
        # only a tail too short for one 50 Hz frame may be left out
        assert num_encoder_frames(num_samples - bounds[-1][1]) == 0
    assert sum(num_encoder_frames(end - start) for start, end in bounds) == num_encoder_frames(num_samples)
    assert num_mel_frames(num_samples) * HOP_SAMPLES <= num_samples
