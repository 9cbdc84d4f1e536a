"""Tiny synthetic corpora and teacher stores for the training tests.

Audio: a per-cut tone plus a little noise, written as 16 kHz wav files.
Targets have the real shapes (whisper ``[T25, 2560]`` with T25 from the
teacher frame math, beats ``[527]`` logits, ecapa ``[192]``) and carry
structure a student can learn: per-dimension offsets shared by all cuts plus
a per-cut part, so each KD loss has room to fall.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mt2kd.cuts import SAMPLE_RATE

WHISPER_DIM = 2560
NUM_CLASSES = 527
EMBEDDING_DIM = 192


def teacher_frames(num_samples: int) -> int:
    """Stacked 25 Hz whisper frames: mel = N // 160, 50 Hz = (mel + 1) // 2, 25 Hz = that // 2."""
    return ((num_samples // 160 + 1) // 2) // 2


def _make_cuts(folder: Path, prefix: str, durations: list[float], seed: int):
    from lhotse import CutSet, Recording, SupervisionSegment
    from lhotse.cut import MonoCut

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    cuts = []
    for i, duration in enumerate(durations):
        cut_id = f"{prefix}-{i:03d}"
        t = np.arange(int(duration * SAMPLE_RATE)) / SAMPLE_RATE
        tone = 0.3 * np.sin(2 * np.pi * (150 + 90 * i) * t) + 0.02 * rng.standard_normal(t.size)
        path = folder / f"{cut_id}.wav"
        sf.write(path, tone.astype(np.float32), SAMPLE_RATE)
        rec = Recording.from_file(path, recording_id=cut_id)
        sup = SupervisionSegment(id=cut_id, recording_id=cut_id, start=0.0, duration=rec.duration,
                                 speaker=f"spk{i % 3}", text=f"utterance {i}")
        cut = MonoCut(id=cut_id, start=0.0, duration=rec.duration, channel=0, recording=rec, supervisions=[sup])
        cut.custom = {"events": [i % 5, (i + 2) % 5]}
        cuts.append(cut)
    return CutSet.from_cuts(cuts)


def _targets(cut, seed: int, whisper_dim: int = WHISPER_DIM) -> dict[str, np.ndarray]:
    idx = int(cut.id.rsplit("-", 1)[1])
    shared = np.random.default_rng(1000 + seed)
    own = np.random.default_rng([seed, idx])
    num_frames = teacher_frames(cut.num_samples)
    frame_offset = shared.normal(0.0, 1.0, whisper_dim)
    frames = frame_offset + 0.3 * own.standard_normal((num_frames, whisper_dim))
    logits = 4.0 * np.sign(shared.standard_normal(NUM_CLASSES)) + 0.5 * own.standard_normal(NUM_CLASSES)
    embedding = 3.0 * shared.standard_normal(EMBEDDING_DIM) + own.standard_normal(EMBEDDING_DIM)
    return {"whisper": frames.astype(np.float32), "beats": logits.astype(np.float32),
            "ecapa": embedding.astype(np.float32)}


def _fill_store(path: Path, cuts, seed: int = 0, missing: dict[str, set[str]] | None = None,
                whisper_dim: int = WHISPER_DIM, attrs: dict | None = None):
    from mt2kd.store import TeacherSpec, TeacherStore

    specs = [
        TeacherSpec("whisper", "frames", whisper_dim, frame_rate=25.0),
        TeacherSpec("beats", "clip", NUM_CLASSES),
        TeacherSpec("ecapa", "clip", EMBEDDING_DIM),
    ]
    store = TeacherStore.create(str(path), specs, attrs={"synthetic": True, **(attrs or {})})
    missing = missing or {}
    with store.shard_writer(0) as writer:
        for cut in cuts:
            targets = _targets(cut, seed, whisper_dim)
            arrays = {k: v for k, v in targets.items() if cut.id not in missing.get(k, set())}
            writer.put(cut.id, arrays)
    return path


@pytest.fixture
def make_cuts(tmp_path: Path) -> Callable:
    """``make_cuts(prefix, durations, seed=0) -> CutSet`` with wavs under tmp_path."""
    return lambda prefix, durations, seed=0: _make_cuts(tmp_path / "audio" / prefix, prefix, durations, seed)


@pytest.fixture
def fill_store() -> Callable:
    """``fill_store(path, cuts, seed=0, missing={teacher: {cut_id}}, whisper_dim=2560, attrs=None) -> path``."""
    return _fill_store


@pytest.fixture
def corpus(tmp_path: Path, make_cuts, fill_store) -> dict:
    """Six cuts of 0.6-1.6 s, their manifest and a full store."""
    cuts = make_cuts("utt", [0.6, 0.8, 1.0, 1.2, 1.4, 1.6])
    manifest = tmp_path / "cuts.jsonl.gz"
    cuts.to_file(manifest)
    store = fill_store(tmp_path / "teachers.zarr", cuts)
    return {"cuts": cuts, "manifest": str(manifest), "store": str(store)}


@pytest.fixture
def deterministic():
    """Deterministic torch kernels for the test's duration (bitwise resume comparisons need them)."""
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)
