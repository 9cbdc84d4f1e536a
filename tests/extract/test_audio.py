"""Decoding a cut for the teachers: a file whose rate differs from its manifest's is a failure naming both."""

from __future__ import annotations

from pathlib import Path

import soundfile as sf

from mt2kd.extract._audio import CutAudio, CutFailure, load_cut_audio
from mt2kd.tests.extract._corpus import cut, tone


def test_a_file_at_another_rate_than_its_manifest_says_is_a_failure_naming_both_rates(tmp_path: Path) -> None:
    """Before: an 8 kHz file declared as 16 kHz reached the teachers at twice the speed."""
    sf.write(tmp_path / "narrow.wav", tone(1.5, 8000), 8000)
    declared_wide = cut("wide", tmp_path / "narrow.wav", 16_000, int(1.5 * 16_000))
    failure = load_cut_audio(declared_wide)
    assert isinstance(failure, CutFailure) and failure.cut_id == "wide"
    assert failure.reason == (f"sampling rate mismatch: the manifest says 16000 Hz for recording 'wide', but "
                              f"{tmp_path / 'narrow.wav'} is 8000 Hz")
    declared_right = load_cut_audio(cut("narrow", tmp_path / "narrow.wav", 8000, int(1.5 * 8000)))
    assert isinstance(declared_right, CutAudio) and declared_right.samples.size == int(1.5 * 16_000)  # resampled
