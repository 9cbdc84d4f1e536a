"""What each way of storing whisper frames costs the student: bytes per audio hour beside held-out KD L1.

On one corpus and seed, the same tiny student is trained from the frame
targets as each codec stores them, then scored on held-out cuts by its L1
to the float32 teacher frames (the anchor row is the student trained from
float32 frames):

- ``float32``, ``float16`` (the store's default): frames as stored;
- ``uint8-scalar``: a lossy scalar codec, each dimension scaled to 0..255
  between its min and max over the corpus (stored as uint8 frames; the
  2 x dim float32 scale table is a fixed cost left out of the bytes);
- ``mvq-N``: ``mt2kd store quantize`` codes with N codebooks; the student
  learns them with the MVQ head and cross-entropy, and its frames are the
  expected sum of codebook centres under its predictions (the quantiser
  file is a fixed cost left out of the bytes).

Bytes are the shard data files of a store written with each codec (the
default ``blosc-lz4``), per hour of audio. ``untrained`` is the student
before any step, through the float head. The corpus is the demo's 44 speech
cuts (``workflows/demo``); the teacher is a tiny random-weight whisper
(128-D frames at 25 Hz): the numbers compare codecs on one small corpus,
they are not real whisper-large frames.

Usage: ``python bench/codec_bench.py [--steps 30] [--codebooks 4,8,16] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import builtins
import dataclasses
import functools
import gzip
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from mt2kd.store import QuantizeConfig, TeacherSpec, TeacherStore, load_quantizer, quantize

DEMO = Path(__file__).resolve().parents[1] / "workflows" / "demo"
FRAME_RATE = 25.0  # Hz, stacked whisper frames
TEACHER = "whisper"


@dataclasses.dataclass(frozen=True)
class Settings:
    """One bench run."""

    steps: int = 30  # optimiser steps per student
    batch_cuts: int = 6  # cuts per training batch
    heldout_cuts: int = 8  # cuts never trained on, scored by L1 to the float32 frames
    lr: float = 3e-3  # AdamW learning rate of the student
    codebooks: tuple[int, ...] = (4, 8, 16)  # MVQ codebook counts
    quantizer_iters: int = 20  # steps of each of the quantiser trainer's two phases
    train_frames: int = 4000  # frames the quantisers train on
    seed: int = 0  # teacher weights, split, student init, batches, quantiser


@dataclasses.dataclass
class Corpus:
    """Per cut: the student's fbank and the teacher's float32 frames; and the split."""

    fbank: dict[str, torch.Tensor]
    frames: dict[str, np.ndarray]
    train: list[str]
    heldout: list[str]
    hours: float


# ---------------------------------------------------------------- corpus and teacher


def demo_audio() -> dict[str, tuple[np.ndarray, float]]:
    """The demo speech cuts: cut ID -> (16 kHz waveform, duration s)."""
    audio = {}
    with gzip.open(DEMO / "speech_cuts.jsonl.gz", "rt") as f:
        for line in f:
            cut = json.loads(line)
            samples, _ = sf.read(DEMO / cut["recording"]["sources"][0]["source"], dtype="float32")
            audio[cut["id"]] = (samples, float(cut["duration"]))
    return audio


def make_corpus(settings: Settings, folder: Path) -> Corpus:
    from mt2kd.extract import load_teacher, make_tiny_checkpoints
    from mt2kd.train import compute_fbank

    checkpoint = make_tiny_checkpoints(folder / "teachers", seed=settings.seed, names=("whisper",))["whisper"]
    teacher = load_teacher("whisper", checkpoint)
    audio = demo_audio()
    frames = {cut_id: teacher.extract([samples])[0].astype(np.float32) for cut_id, (samples, _) in audio.items()}
    fbank = {cut_id: compute_fbank(samples) for cut_id, (samples, _) in audio.items()}
    order = list(np.random.default_rng(settings.seed).permutation(sorted(audio)))
    hours = sum(d for _, d in audio.values()) / 3600
    return Corpus(fbank, frames, order[settings.heldout_cuts:], order[:settings.heldout_cuts], hours)


def write_store(path: Path, corpus: Corpus, spec: TeacherSpec, encode: Callable[[np.ndarray], np.ndarray]
                ) -> TeacherStore:
    store = TeacherStore.create(str(path), [spec], attrs={"random_teachers": True})
    with store.shard_writer(0) as writer:
        for cut_id, frames in corpus.frames.items():
            writer.put(cut_id, {spec.name: encode(frames)})
    return store


def data_bytes(store: TeacherStore) -> int:
    """Bytes of the teachers' shard data files (index and chunks), the per-hour cost of a codec."""
    return sum(rows.nbytes for record in store.shards.values() for rows in record.teachers.values())


# ---------------------------------------------------------------- codecs


@dataclasses.dataclass
class Targets:
    """What a student trains on: float frames (L1) or codes (cross-entropy), and how its frames are read out."""

    name: str
    nbytes: int
    frames: dict[str, np.ndarray] | None = None  # float targets (as stored, decoded to float32)
    codes: dict[str, np.ndarray] | None = None  # uint8 [T, N] MVQ codes
    codebooks: np.ndarray | None = None  # [N, 256, dim] of the quantiser

    @property
    def codes_width(self) -> int:
        """Codebooks per frame of the MVQ codes."""
        assert self.codes is not None, "float targets have no codes"
        return next(iter(self.codes.values())).shape[1]


def float_targets(name: str, dtype: str, corpus: Corpus, folder: Path) -> Targets:
    dim = next(iter(corpus.frames.values())).shape[1]
    store = write_store(folder / f"{name}.zarr", corpus, TeacherSpec(TEACHER, "frames", dim, frame_rate=FRAME_RATE,
                                                                     dtype=dtype), lambda x: x)
    frames = {c: store.get(c)[TEACHER].astype(np.float32) for c in corpus.frames}
    return Targets(name, data_bytes(store), frames=frames)


def scalar_targets(corpus: Corpus, folder: Path) -> Targets:
    """8 bits per value: each dimension mapped linearly from its [min, max] over the corpus to 0..255."""
    everything = np.concatenate(list(corpus.frames.values()))
    low, high = everything.min(axis=0), everything.max(axis=0)
    step = np.where(high > low, (high - low) / 255.0, 1.0)
    dim = everything.shape[1]
    spec = TeacherSpec(TEACHER, "frames", dim, frame_rate=FRAME_RATE, dtype="uint8")
    store = write_store(folder / "uint8.zarr", corpus, spec,
                        lambda x: np.clip(np.rint((x - low) / step), 0, 255).astype(np.uint8))
    frames = {c: (low + store.get(c)[TEACHER].astype(np.float32) * step).astype(np.float32) for c in corpus.frames}
    return Targets("uint8-scalar", data_bytes(store), frames=frames)


def mvq_targets(num_codebooks: int, settings: Settings, source: str, folder: Path) -> Targets:
    out = folder / f"mvq{num_codebooks}.zarr"
    config = QuantizeConfig(source, str(out), num_codebooks=num_codebooks, train_frames=settings.train_frames,
                            heldout_frames=max(1, settings.train_frames // 10), iters=settings.quantizer_iters,
                            batch_frames=256, seed=settings.seed, refine_iters=2)
    quantize(config, echo=lambda text: None)
    store = TeacherStore.open(str(out))
    name = config.codes_teacher
    codes = {c: store.get(c)[name] for c in store.cut_ids()}
    return Targets(f"mvq-{num_codebooks}", data_bytes(store), codes=codes,
                   codebooks=load_quantizer(store, name).codebooks)


# ---------------------------------------------------------------- the student


def make_student(dim: int, seed: int, targets: Targets) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    from mt2kd.train import MvqHead, Student, StudentConfig

    torch.manual_seed(seed)
    student = Student(dataclasses.replace(StudentConfig.preset("tiny"), teacher_frame_dim=dim))
    head = None if targets.codes is None else MvqHead(student.config.model_dim, targets.codes_width)
    return student, head


def batch(corpus: Corpus, cut_ids: Sequence[str], rows: dict[str, np.ndarray]
          ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    feats = [corpus.fbank[c] for c in cut_ids]
    num_frames = torch.tensor([f.shape[0] for f in feats])
    fbank = torch.zeros(len(feats), int(num_frames.max()), feats[0].shape[1])
    for i, f in enumerate(feats):
        fbank[i, :f.shape[0]] = f
    arrays = [rows[c] for c in cut_ids]
    lengths = torch.tensor([a.shape[0] for a in arrays])
    values = torch.zeros(len(arrays), int(lengths.max()), arrays[0].shape[1],
                         dtype=torch.from_numpy(arrays[0][:0]).dtype)
    for i, a in enumerate(arrays):
        values[i, :a.shape[0]] = torch.from_numpy(a)
    return fbank, num_frames, {"values": values, "lengths": lengths, "present": lengths > 0}


def l1(predicted: torch.Tensor, num_frames: torch.Tensor, target: dict[str, torch.Tensor]) -> torch.Tensor:
    from mt2kd.train import align_frames

    s, t, mask = align_frames(predicted, num_frames, target["values"].float(), target["lengths"])
    return ((s - t).abs() * mask[..., None]).sum() / (mask.sum() * s.shape[-1])


def student_frames(student: torch.nn.Module, head: torch.nn.Module | None, targets: Targets, fbank: torch.Tensor,
                   num_frames: torch.Tensor) -> tuple[Any, torch.Tensor]:
    """The student's output and its frames: the float head's, or the MVQ head's expected centres."""
    from mt2kd.train import expected_frames

    out = student(fbank, num_frames)
    if head is None:
        return out, out.frames
    return out, expected_frames(head(out.hidden_states[-1]), targets.codebooks)


def train_student(corpus: Corpus, targets: Targets, settings: Settings) -> tuple[float, float, float]:
    """(first loss, last loss, held-out L1 to the float32 frames) of a student trained on ``targets``."""
    from mt2kd.train import mvq_loss

    dim = next(iter(corpus.frames.values())).shape[1]
    student, head = make_student(dim, settings.seed, targets)
    params = list(student.parameters()) + ([] if head is None else list(head.parameters()))
    optimizer = torch.optim.AdamW(params, lr=settings.lr)
    rng = np.random.default_rng(settings.seed)
    rows = targets.codes if targets.codes is not None else targets.frames
    assert rows is not None, f"{targets.name} has neither frames nor codes"
    losses = []
    for _ in range(settings.steps):
        cut_ids = [corpus.train[i] for i in rng.choice(len(corpus.train), settings.batch_cuts, replace=False)]
        fbank, num_frames, target = batch(corpus, cut_ids, rows)
        out = student(fbank, num_frames)
        if head is None:
            loss = l1(out.frames, out.num_frames, target)
        else:
            loss = mvq_loss(head(out.hidden_states[-1]), out.num_frames, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return float(np.mean(losses[:10])), float(np.mean(losses[-10:])), heldout_l1(corpus, student, head, targets)


def heldout_l1(corpus: Corpus, student: torch.nn.Module, head: torch.nn.Module | None, targets: Targets) -> float:
    """Mean absolute difference to the float32 teacher frames over every valid frame of the held-out cuts."""
    student.eval()
    total = count = 0.0
    with torch.no_grad():
        for cut_id in corpus.heldout:
            fbank, num_frames, target = batch(corpus, [cut_id], corpus.frames)
            out, frames = student_frames(student, head, targets, fbank, num_frames)
            n = min(int(out.num_frames[0]), corpus.frames[cut_id].shape[0])
            total += float(l1(frames, out.num_frames, target)) * n
            count += n
    return total / count


# ---------------------------------------------------------------- the table


def run(settings: Settings, folder: Path, say: Callable[[str], None] = print) -> list[dict[str, Any]]:
    start = time.monotonic()
    corpus = make_corpus(settings, folder)
    say(f"corpus: {len(corpus.frames)} demo cuts, {corpus.hours * 60:.2f} min of audio "
        f"({len(corpus.train)} train, {len(corpus.heldout)} held out); tiny random whisper, "
        f"{next(iter(corpus.frames.values())).shape[1]}-D frames ({time.monotonic() - start:.0f} s)")
    all_targets = [float_targets("float32", "float32", corpus, folder),
                   float_targets("float16", "float16", corpus, folder), scalar_targets(corpus, folder)]
    for n in settings.codebooks:
        all_targets.append(mvq_targets(n, settings, str(folder / "float32.zarr"), folder))
        say(f"quantised with {n} codebooks ({time.monotonic() - start:.0f} s)")
    results = []
    dim = next(iter(corpus.frames.values())).shape[1]
    untrained_student, _ = make_student(dim, settings.seed, all_targets[0])
    results.append({"codec": "untrained", "bytes_per_hour": None, "first_loss": None, "last_loss": None,
                    "heldout_l1": heldout_l1(corpus, untrained_student, None, all_targets[0])})
    for targets in all_targets:
        first, last, score = train_student(corpus, targets, settings)
        results.append({"codec": targets.name, "bytes_per_hour": targets.nbytes / corpus.hours,
                        "first_loss": first, "last_loss": last, "heldout_l1": score})
        say(f"trained from {targets.name}: loss {first:.3f} -> {last:.3f}, held-out L1 {score:.4f} "
            f"({time.monotonic() - start:.0f} s)")
    return results


def table(results: list[dict[str, Any]]) -> str:
    anchor = next(r for r in results if r["codec"] == "float32")
    header = ["codec", "bytes / audio hour", "bytes vs float32", "train loss first -> last", "held-out L1",
              "L1 vs float32"]
    rows = []
    for r in results:
        size = r["bytes_per_hour"]
        rows.append([r["codec"], "-" if size is None else f"{size / 1024:,.1f} KiB",
                     "-" if size is None else f"{size / anchor['bytes_per_hour']:.4f}x",
                     "-" if r["first_loss"] is None else f"{r['first_loss']:.3f} -> {r['last_loss']:.3f}",
                     f"{r['heldout_l1']:.4f}", f"{r['heldout_l1'] / anchor['heldout_l1']:.2f}x"])
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in [header, *rows]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, load average {load:.1f}")


def main() -> None:
    print = functools.partial(builtins.print, flush=True)  # progress lines while it runs
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=Settings.steps)
    parser.add_argument("--codebooks", default=",".join(map(str, Settings.codebooks)))
    parser.add_argument("--quantizer-iters", type=int, default=Settings.quantizer_iters)
    parser.add_argument("--seed", type=int, default=Settings.seed)
    args = parser.parse_args()
    settings = Settings(steps=args.steps, codebooks=tuple(int(n) for n in args.codebooks.split(",")),
                        quantizer_iters=args.quantizer_iters, seed=args.seed)
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as folder:
        results = run(settings, Path(folder), say=print)
    print(f"settings: {dataclasses.asdict(settings)}")
    print(table(results))


if __name__ == "__main__":
    main()
