"""Regenerate the demo corpus under workflows/demo/ (speech + sound events, lhotse manifests).

Speech: espeak-ng speaks short sentences with four distinct voices (voice,
pitch and speed differ per speaker); each utterance is resampled to 16 kHz
and written as 16-bit FLAC with its transcript and speaker as a supervision.
Events: synthesised clips (tones, chirps, noise bursts, clicks and mixtures
of them) whose multi-hot labels are ``cut.custom["events"]``, a list of label
names (the convention eval/ reads).

Recording paths in the manifests are relative to the manifest's folder, so
the corpus works from any checkout (the extraction planner resolves them).
The output is deterministic for a given espeak-ng version.

Usage: ``python scripts/make_demo_corpus.py [--out workflows/demo]`` (needs
``espeak-ng`` on PATH: ``apt-get install -y espeak-ng``).
"""

from __future__ import annotations

import argparse
import io
import subprocess
import wave
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import chirp, resample_poly

SAMPLE_RATE = 16_000  # Hz, what the teachers take
SEED = 20_240_601  # fixes the synthesised events
NUM_EVENT_CLIPS = 20
EVENT_LABELS = ("tone", "chirp", "noise", "clicks")

# speaker -> espeak-ng voice, pitch (0-99), words per minute
SPEAKERS = {
    "spk-anna": ("en-us+f3", 70, 165),
    "spk-bert": ("en-gb+m3", 30, 150),
    "spk-cleo": ("en-us+f5", 85, 185),
    "spk-dave": ("en-gb-scotland+m7", 20, 135),
}
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things.",
    "A teacher model labels every cut once.",
    "Seven small students learn from three teachers.",
    "The rain in the valley stopped before noon.",
    "Open the window and let the cold air in.",
)


def speak(text: str, voice: str, pitch: int, speed: int) -> np.ndarray:
    """espeak-ng's 22.05 kHz output resampled to 16 kHz float32."""
    raw = subprocess.run(["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "--stdout", text],
                         check=True, capture_output=True).stdout
    with wave.open(io.BytesIO(raw)) as w:
        rate = w.getframerate()
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768
    ratio = Fraction(SAMPLE_RATE, rate)
    return resample_poly(samples, ratio.numerator, ratio.denominator).astype(np.float32)


def trim_silence(audio: np.ndarray, threshold: float = 1e-3) -> np.ndarray:
    loud = np.flatnonzero(np.abs(audio) > threshold)
    return audio if loud.size == 0 else audio[max(0, loud[0] - 800): loud[-1] + 800]


def synth_event(label: str, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(num_samples) / SAMPLE_RATE
    if label == "tone":
        return 0.3 * np.sin(2 * np.pi * rng.uniform(220, 1200) * t)
    if label == "chirp":
        return 0.3 * chirp(t, f0=rng.uniform(200, 500), t1=t[-1], f1=rng.uniform(2000, 6000))
    if label == "noise":
        burst = np.zeros(num_samples)
        start = int(rng.uniform(0, 0.5) * num_samples)
        burst[start: start + num_samples // 3] = rng.normal(0, 0.2, len(burst[start: start + num_samples // 3]))
        return burst
    clicks = np.zeros(num_samples)
    clicks[rng.choice(num_samples - 40, size=int(rng.integers(4, 12)), replace=False)] = 0.8
    return np.convolve(clicks, np.hanning(40), mode="same")


def cut_dict(cut_id: str, audio_path: str, num_samples: int, **extra: object) -> dict:
    duration = num_samples / SAMPLE_RATE
    recording = {"id": cut_id, "sources": [{"type": "file", "channels": [0], "source": audio_path}],
                 "sampling_rate": SAMPLE_RATE, "num_samples": num_samples, "duration": duration,
                 "channel_ids": [0]}
    return {"id": cut_id, "start": 0.0, "duration": duration, "channel": 0, "recording": recording, **extra}


def make_speech(out: Path) -> list[dict]:
    (out / "speech").mkdir(parents=True, exist_ok=True)
    cuts = []
    for speaker, (voice, pitch, speed) in SPEAKERS.items():
        for u, text in enumerate(SENTENCES):
            cut_id = f"{speaker}-{u:02d}"
            audio = trim_silence(speak(text, voice, pitch, speed))
            sf.write(out / "speech" / f"{cut_id}.flac", audio, SAMPLE_RATE, subtype="PCM_16")
            sup = {"id": cut_id, "recording_id": cut_id, "start": 0.0, "duration": len(audio) / SAMPLE_RATE,
                   "channel": 0, "text": text, "speaker": speaker, "language": "English"}
            cuts.append(cut_dict(cut_id, f"speech/{cut_id}.flac", len(audio), supervisions=[sup]))
    return cuts


def make_events(out: Path) -> list[dict]:
    (out / "events").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    cuts = []
    for i in range(NUM_EVENT_CLIPS):
        num_samples = int(rng.uniform(1.0, 3.0) * SAMPLE_RATE)
        labels = sorted(rng.choice(EVENT_LABELS, size=int(rng.integers(1, 3)), replace=False).tolist())
        audio = sum(synth_event(label, num_samples, rng) for label in labels) + rng.normal(0, 0.003, num_samples)
        audio = (0.9 * audio / max(1.0, float(np.abs(audio).max()))).astype(np.float32)
        cut_id = f"event-{i:02d}"
        sf.write(out / "events" / f"{cut_id}.flac", audio, SAMPLE_RATE, subtype="PCM_16")
        cuts.append(cut_dict(cut_id, f"events/{cut_id}.flac", num_samples, supervisions=[],
                             custom={"events": labels}))
    return cuts


def write_manifest(cuts: list[dict], path: Path) -> None:
    import gzip
    import json

    # mtime=0: the same cuts give the same bytes, so regenerating shows no diff
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        for cut in cuts:
            f.write((json.dumps({**cut, "type": "MonoCut"}) + "\n").encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "workflows" / "demo")
    out = parser.parse_args().out
    write_manifest(make_speech(out), out / "speech_cuts.jsonl.gz")
    write_manifest(make_events(out), out / "events_cuts.jsonl.gz")
    # one label a line, line order = class index (the plain-text format eval's --labels reads)
    (out / "labels.txt").write_text("".join(f"{label}\n" for label in EVENT_LABELS), encoding="utf-8")
    print(f"wrote the demo corpus to {out}")


if __name__ == "__main__":
    main()
