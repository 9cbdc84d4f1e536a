"""Extraction job vs the teachers' pure forward time and vs a one-process lhotse + HDF5 baseline.

All rows run the same cuts (the demo corpus repeated ``--repeat`` times under
new cut IDs) through the same tiny random teachers of the real architectures
on CPU, with the same duration-sorted batches of ``--max-duration`` seconds.

- forward: audio decoded beforehand, only ``teacher.extract`` timed (the anchor);
- baseline: lhotse ``UnsupervisedWaveformDataset`` + ``SimpleCutSampler`` in
  one process, teachers batched, outputs written float32 with lhotse's
  ``NumpyHdf5Writer`` (how the MT2KD authors' recipe stores labels);
- job: ``mt2kd.extract`` end to end on a LocalCluster with N workers, wall
  time including cluster start and per-worker teacher loading, and the
  summed in-task time (shard start to commit, from the events log).

Usage: ``python bench/extract_bench.py [--repeat 5] [--max-duration 30]``.
Ratios: time / forward (target <= 1.15 for the job's tasks) and job
throughput / baseline throughput (target >= 1.0).
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

DEMO = Path(__file__).resolve().parents[1] / "workflows" / "demo"


def write_corpus(folder: Path, repeat: int) -> Path:
    """The demo manifests repeated under new cut IDs, with absolute audio paths."""
    from mt2kd.extract._plan import iter_cut_dicts

    cuts = [c for m in ("speech_cuts.jsonl.gz", "events_cuts.jsonl.gz") for c in iter_cut_dicts(str(DEMO / m))]
    path = folder / "bench_cuts.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for r in range(repeat):
            for cut in cuts:
                f.write(json.dumps({**cut, "id": f"{cut['id']}-r{r}", "type": cut.get("type", "MonoCut")}) + "\n")
    return path


def sorted_batches(items: list[tuple[str, float, Any]], max_duration: float) -> list[list[tuple[str, float, Any]]]:
    items = sorted(items, key=lambda x: (-x[1], x[0]))
    out: list[list[tuple[str, float, Any]]] = [[]]
    seconds = 0.0
    for item in items:
        if out[-1] and seconds + item[1] > max_duration:
            out.append([])
            seconds = 0.0
        out[-1].append(item)
        seconds += item[1]
    return out


def time_forward(manifest: Path, teachers: dict[str, Any], max_duration: float) -> float:
    from mt2kd.extract._audio import CutAudio, load_cut_audio
    from mt2kd.extract._plan import iter_cut_dicts

    audio = [a for a in map(load_cut_audio, iter_cut_dicts(str(manifest))) if isinstance(a, CutAudio)]
    batches = sorted_batches([(a.cut_id, a.duration, a.samples) for a in audio], max_duration)
    start = time.perf_counter()
    for batch in batches:
        for teacher in teachers.values():
            teacher.extract([x[2] for x in batch])
    return time.perf_counter() - start


def time_baseline(manifest: Path, teachers: dict[str, Any], max_duration: float, out: Path) -> float:
    import torch
    from lhotse import CutSet, NumpyHdf5Writer
    from lhotse.dataset import SimpleCutSampler, UnsupervisedWaveformDataset

    start = time.perf_counter()
    cuts = CutSet.from_jsonl_lazy(manifest).to_eager().sort_by_duration(ascending=False)
    sampler = SimpleCutSampler(cuts, max_duration=max_duration)
    loader = torch.utils.data.DataLoader(UnsupervisedWaveformDataset(collate=False), sampler=sampler,
                                         batch_size=None, num_workers=0)
    with NumpyHdf5Writer(out) as writer:
        for batch in loader:
            waves = [np.asarray(a, np.float32).reshape(-1) for a in batch["audio"]]
            for name, teacher in teachers.items():
                for cut, value in zip(batch["cuts"], teacher.extract(waves)):
                    writer.store_array(f"{name}/{cut.id}", np.asarray(value, np.float32))
    return time.perf_counter() - start


def time_job(manifest: Path, paths: dict[str, Path], max_duration: float, workers: int, folder: Path
             ) -> tuple[float, float]:
    from mt2kd.extract._config import ExtractConfig, TeacherConfig
    from mt2kd.extract._job import extract

    events = folder / f"events-{workers}.jsonl"
    config = ExtractConfig(cuts=(str(manifest),), store=str(folder / f"store-{workers}"), workers=workers,
                           teachers=tuple(TeacherConfig(n, str(p)) for n, p in paths.items()),
                           max_duration=max_duration, shard_hours=0.02, events_log=str(events))
    start = time.perf_counter()
    extract(config, echo=lambda _: None, progress=False)
    wall = time.perf_counter() - start
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    began = {e["shard"]: e["time"] for e in lines if e["event"] == "start"}
    in_task = sum(e["time"] - began[e["shard"]] for e in lines if e["event"] == "commit")
    return wall, in_task


def enlarge(paths: dict[str, Path]) -> None:
    """Rewrite whisper and beats at a size where the forward pass, not the plumbing, costs the time."""
    from mt2kd.extract.beats import write_tiny_beats_checkpoint
    from mt2kd.extract.whisper import write_tiny_whisper_checkpoint

    write_tiny_whisper_checkpoint(paths["whisper"], n_audio_state=384, n_audio_head=6, n_audio_layer=4)
    write_tiny_beats_checkpoint(paths["beats"], encoder_embed_dim=256, encoder_layers=4,
                                encoder_ffn_embed_dim=1024, encoder_attention_heads=4)


def main() -> None:
    parser = argparse.ArgumentParser(description="extraction job vs forward-only and an HDF5 baseline")
    parser.add_argument("--repeat", type=int, default=5, help="copies of the 100 s demo corpus")
    parser.add_argument("--max-duration", type=float, default=30.0, help="s of audio per batch")
    parser.add_argument("--size", choices=("tiny", "small"), default="small",
                        help="small: whisper-tiny-sized encoder and a 4-layer BEATs (still random weights)")
    args = parser.parse_args()
    import torch

    from mt2kd.extract import make_tiny_checkpoints
    from mt2kd.extract._plugin import load_teachers
    from mt2kd.extract._config import TeacherConfig

    torch.set_num_threads(1)  # one core per process, as each job worker gets
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        manifest = write_corpus(folder, args.repeat)
        paths = make_tiny_checkpoints(folder / "teachers")
        if args.size == "small":
            enlarge(paths)
        teachers = load_teachers([TeacherConfig(n, str(p)) for n, p in paths.items()], "fp32", "cpu")
        audio_s = sum(json.loads(line)["duration"] for line in gzip.open(manifest, "rt"))
        forward = time_forward(manifest, teachers, args.max_duration)
        baseline = time_baseline(manifest, teachers, args.max_duration, folder / "baseline.h5")
        rows = [("forward only (anchor)", forward, forward), ("baseline lhotse+HDF5, 1 process", baseline, baseline)]
        for workers in (1, 2):
            wall, in_task = time_job(manifest, paths, args.max_duration, workers, folder)
            rows.append((f"job {workers} worker(s): in-task sum", in_task, None))
            rows.append((f"job {workers} worker(s): wall", wall, wall))
    print(f"{audio_s:.0f} s of audio, {args.size} random teachers on CPU, max_duration {args.max_duration:g} s")
    print(f"{'row':<36} {'seconds':>8} {'audio-s/s':>10} {'x forward':>10} {'thr. vs baseline':>17}")
    for name, seconds, wall in rows:
        speed = f"{audio_s / wall:10.1f}" if wall else f"{'-':>10}"
        versus = f"{baseline / wall:17.2f}" if wall else f"{'-':>17}"
        print(f"{name:<36} {seconds:8.2f} {speed} {seconds / forward:10.2f} {versus}")


if __name__ == "__main__":
    main()
