"""Small corpora for the job tests: the demo corpus and a bad-input corpus covering every failure case."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf

from mt2kd.cuts import SAMPLE_RATE

DEMO = Path(__file__).resolve().parents[2] / "workflows" / "demo"

# cut ID -> start of the reason the store must record (None: must be extracted fine)
BAD_CASES = {
    "good-a": None,
    "good-b": None,
    "rate-8k": None,  # resampled, not a failure
    "stereo": None,  # downmixed, not a failure
    "missing": "missing audio file",
    "corrupt": "audio could not be decoded",
    "truncated": "audio could not be decoded",
    "zero-length": "zero-length cut",
    "nan-samples": "non-finite samples",
    "rate-mismatch": "sampling rate mismatch",
}


def tone(seconds: float, rate: int = SAMPLE_RATE, freq: float = 440.0, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).normal(0, 0.01, t.size)
    return (0.3 * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)


def cut(cut_id: str, path: Path, rate: int, num_samples: int, num_channels: int = 1,
        duration: float | None = None) -> dict:
    seconds = num_samples / rate if duration is None else duration
    recording = {"id": cut_id, "sources": [{"type": "file", "channels": list(range(num_channels)),
                                            "source": str(path)}],
                 "sampling_rate": rate, "num_samples": num_samples, "duration": num_samples / rate,
                 "channel_ids": list(range(num_channels))}
    kind = "MultiCut" if num_channels > 1 else "MonoCut"
    channel: int | list[int] = list(range(num_channels)) if num_channels > 1 else 0
    return {"id": cut_id, "start": 0.0, "duration": seconds, "channel": channel, "recording": recording,
            "supervisions": [], "type": kind}


def write_manifest(cuts: list[dict], path: Path) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for c in cuts:
            f.write(json.dumps(c) + "\n")
    return path


def make_bad_corpus(folder: Path) -> Path:
    """A manifest with one cut per case of BAD_CASES."""
    folder.mkdir(parents=True, exist_ok=True)
    cuts = []
    for i, name in enumerate(("good-a", "good-b")):
        sf.write(folder / f"{name}.flac", tone(1.2 + i * 0.7, seed=i), SAMPLE_RATE)
        cuts.append(cut(name, folder / f"{name}.flac", SAMPLE_RATE, int((1.2 + i * 0.7) * SAMPLE_RATE)))
    sf.write(folder / "rate-8k.wav", tone(1.5, 8000), 8000)
    cuts.append(cut("rate-8k", folder / "rate-8k.wav", 8000, int(1.5 * 8000)))
    stereo = np.stack([tone(1.3, seed=3), tone(1.3, freq=880, seed=4)], axis=1)
    sf.write(folder / "stereo.wav", stereo, SAMPLE_RATE)
    cuts.append(cut("stereo", folder / "stereo.wav", SAMPLE_RATE, stereo.shape[0], num_channels=2))
    cuts.append(cut("missing", folder / "no-such-file.flac", SAMPLE_RATE, SAMPLE_RATE))
    (folder / "corrupt.flac").write_bytes(b"fLaC" + bytes(np.random.default_rng(5).integers(0, 256, 4000,
                                                                                           dtype=np.uint8)))
    cuts.append(cut("corrupt", folder / "corrupt.flac", SAMPLE_RATE, SAMPLE_RATE))
    sf.write(folder / "full.wav", tone(2.0, seed=6), SAMPLE_RATE, subtype="PCM_16")
    raw = (folder / "full.wav").read_bytes()
    (folder / "truncated.wav").write_bytes(raw[: len(raw) // 3])  # header still claims 2 s
    cuts.append(cut("truncated", folder / "truncated.wav", SAMPLE_RATE, 2 * SAMPLE_RATE))
    shutil.copy(folder / "good-a.flac", folder / "zero.flac")
    cuts.append(cut("zero-length", folder / "zero.flac", SAMPLE_RATE, int(1.2 * SAMPLE_RATE), duration=0.0))
    nan = tone(1.0, seed=7)
    nan[100:200] = np.nan
    sf.write(folder / "nan.wav", nan, SAMPLE_RATE, subtype="FLOAT")
    cuts.append(cut("nan-samples", folder / "nan.wav", SAMPLE_RATE, nan.size))
    cuts.append(cut("rate-mismatch", folder / "rate-8k.wav", SAMPLE_RATE, int(1.5 * SAMPLE_RATE)))  # says 16 kHz
    return write_manifest(cuts, folder / "bad_cuts.jsonl.gz")
