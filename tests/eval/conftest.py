"""A tiny labelled corpus and teacher store built on the fly (no real weights, no downloads).

Four speakers with three cuts each; every cut carries event labels and a
speaker. Teacher outputs are constructed so that the expected scores are
known: logits that rank every positive above every negative (mAP 1) and
embeddings clustered by speaker (EER 0), plus a shuffled store where those
outputs belong to other cuts.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

LABELS = ["dog", "cat", "speech", "music", "rain", "car"]  # the label list, index = position
NUM_SPEAKERS = 4
NUM_CUTS_PER_SPEAKER = 3
NUM_SAMPLES = 8_000  # 0.5 s at 16 kHz
FRAMES_DIM = 16  # width of the synthetic frame teacher
EMBEDDING_DIM = 8
FRAME_RATE = 25.0  # Hz


@dataclasses.dataclass
class Corpus:
    manifest: Path  # CutSet manifest
    labels_file: Path  # one label per line
    cut_ids: list[str]
    speaker_of: dict[str, str]
    targets: np.ndarray  # [num_cuts, num_classes] bool, the events as multi-hot
    logits: np.ndarray  # [num_cuts, num_classes] perfectly ranking teacher logits
    embeddings: np.ndarray  # [num_cuts, EMBEDDING_DIM] clustered by speaker
    frames: list[np.ndarray]  # per cut [T, FRAMES_DIM]
    labels: list[str] = dataclasses.field(default_factory=lambda: list(LABELS))  # class names
    frames_dim: int = FRAMES_DIM
    embedding_dim: int = EMBEDDING_DIM


def _events(rng: np.random.Generator) -> np.ndarray:
    targets = rng.random((NUM_SPEAKERS * NUM_CUTS_PER_SPEAKER, len(LABELS))) < 0.35
    targets[0] = True  # every class has a positive
    targets[1] = False  # and a negative
    return targets


def _write_corpus(root: Path, with_events: bool, rng: np.random.Generator) -> Corpus:
    from lhotse import CutSet, Recording, SupervisionSegment

    targets = _events(rng)
    cut_ids, speaker_of, cuts = [], {}, []
    for index in range(NUM_SPEAKERS * NUM_CUTS_PER_SPEAKER):
        speaker = f"spk{index // NUM_CUTS_PER_SPEAKER}"
        cut_id = f"{speaker}-utt{index % NUM_CUTS_PER_SPEAKER}"
        path = root / f"{cut_id}.wav"
        sf.write(path, 0.1 * rng.standard_normal(NUM_SAMPLES).astype(np.float32), 16_000)
        cut = Recording.from_file(path, recording_id=cut_id).to_cut()
        cut.supervisions = [SupervisionSegment(f"{cut_id}-sup", cut_id, 0.0, cut.duration, speaker=speaker)]
        if with_events:
            cut.custom = {"events": [LABELS[c] for c in np.flatnonzero(targets[index])]}
        cuts.append(cut)
        cut_ids.append(cut_id)
        speaker_of[cut_id] = speaker
    manifest = root / "cuts.jsonl.gz"
    CutSet.from_cuts(cuts).to_file(manifest)
    labels_file = root / "labels.txt"
    labels_file.write_text("\n".join(LABELS) + "\n")
    return Corpus(manifest, labels_file, cut_ids, speaker_of, targets, *_teacher_outputs(targets, rng))


def _teacher_outputs(targets: np.ndarray, rng: np.random.Generator):
    # positives in (1, 3), negatives in (-3, -1): every positive outranks every negative
    logits = np.where(targets, 1.0, -3.0) + 2.0 * rng.random(targets.shape)
    centres = rng.standard_normal((NUM_SPEAKERS, EMBEDDING_DIM))
    speaker_index = np.arange(len(targets)) // NUM_CUTS_PER_SPEAKER
    embeddings = centres[speaker_index] + 0.01 * rng.standard_normal((len(targets), EMBEDDING_DIM))
    # 0.5 s -> 12 or 13 frames at 25 Hz; vary by one so truncation is exercised
    frames = [rng.standard_normal((12 + i % 2, FRAMES_DIM)) for i in range(len(targets))]
    return logits.astype(np.float32), embeddings.astype(np.float32), frames


def write_store(path: Path, corpus: Corpus, permutation: np.ndarray | None = None,
                skip: tuple[str, ...] = (), teachers: tuple[str, ...] = ("whisper", "beats", "ecapa"),
                attrs: dict | None = None) -> Path:
    """A teacher store of the corpus; ``permutation`` gives each cut another cut's outputs."""
    from mt2kd.store import TeacherSpec, TeacherStore

    specs = [TeacherSpec("whisper", "frames", FRAMES_DIM, frame_rate=FRAME_RATE),
             TeacherSpec("beats", "clip", len(LABELS)), TeacherSpec("ecapa", "clip", EMBEDDING_DIM)]
    store = TeacherStore.create(str(path), [spec for spec in specs if spec.name in teachers], attrs=attrs)
    order = np.arange(len(corpus.cut_ids)) if permutation is None else permutation
    with store.shard_writer("s0") as writer:
        for row, cut_id in enumerate(corpus.cut_ids):
            if cut_id in skip:
                continue
            src = order[row]
            outputs = {"whisper": corpus.frames[src].astype(np.float32),
                       "beats": corpus.logits[src], "ecapa": corpus.embeddings[src]}
            writer.put(cut_id, {name: outputs[name] for name in teachers})
    return path


@pytest.fixture(scope="session")
def make_store():
    """The store builder, for tests that need a variant (cuts left out, outputs permuted)."""
    return write_store


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Corpus:
    return _write_corpus(tmp_path_factory.mktemp("corpus"), True, np.random.default_rng(0))


@pytest.fixture(scope="session")
def unlabelled_corpus(tmp_path_factory) -> Corpus:
    return _write_corpus(tmp_path_factory.mktemp("unlabelled"), False, np.random.default_rng(1))


@pytest.fixture(scope="session")
def store(corpus, tmp_path_factory) -> Path:
    return write_store(tmp_path_factory.mktemp("store") / "teachers.zarr", corpus)


@pytest.fixture(scope="session")
def shuffled_store(corpus, tmp_path_factory) -> Path:
    permutation = np.random.default_rng(5).permutation(len(corpus.cut_ids))
    return write_store(tmp_path_factory.mktemp("shuffled") / "teachers.zarr", corpus, permutation)
