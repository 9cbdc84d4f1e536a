"""Extraction job vs the teachers' pure forward time and vs a one-process lhotse + HDF5 baseline.

Every row runs the same cuts (the demo corpus repeated ``--repeat`` times
under new cut IDs) through the same teachers: the real architectures with
random weights, at ``--size`` tiny, small, or large (whisper large-v3, the
released BEATs and ECAPA-TDNN dimensions; for a GPU).

- forward (the anchor): audio decoded beforehand; only ``teacher.extract``
  is timed, on exactly the batches the job's tasks run (shard by shard,
  longest first, ``--max-duration`` s each), with the torch thread count a
  job worker gets;
- baseline: the MT2KD authors' way, as a fresh process timed from spawn to
  exit: load the teachers, lhotse ``UnsupervisedWaveformDataset`` +
  ``SimpleCutSampler`` (global duration sort), teachers batched, outputs
  written float32 with lhotse's ``NumpyHdf5Writer``; ``--baseline-threads``
  torch threads (default: every core);
- job: ``mt2kd extract`` as a fresh process on a LocalCluster of N workers,
  from spawn to exit (cluster start, teacher loading in every worker, cluster
  shutdown included); also its summed in-task time (shard start to commit,
  from the events log), its fixed start cost (process start to the first
  shard start) and its steady state (first shard start to last commit).
  On CPU the workers are forked from a server that imported torch and the
  teachers' libraries once; ``--compare-spawn`` adds the job with spawned
  workers (dask's default), each importing for itself.

Both write the same values per cut: whisper's 2560-D rows at 25 Hz (two
1280-D 50 Hz frames side by side: twice the features per row, the same
numbers), the 527 BEATs logits and the 192-D ECAPA embedding. The baseline
stores them float32 and uncompressed; the job float16 and compressed, with
validation, failure records and crash-safe commits on top.

Targets: in-task time <= 1.15x the forward (decoding and writing hidden
behind compute), job throughput >= 1.0x the baseline's.

Usage: ``python bench/extract_bench.py [--size small] [--repeat 5] [--workers 1,2]
[--device cuda] [--shard-hours 0.02] [--compare-spawn]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

DEMO = Path(__file__).resolve().parents[1] / "workflows" / "demo"


def write_corpus(folder: Path, repeat: int) -> Path:
    """The demo manifests repeated under new cut IDs, with absolute audio paths."""
    from mt2kd.cuts import iter_cut_dicts

    cuts = [c for m in ("speech_cuts.jsonl.gz", "events_cuts.jsonl.gz") for c in iter_cut_dicts(str(DEMO / m))]
    path = folder / "bench_cuts.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for r in range(repeat):
            for cut in cuts:
                f.write(json.dumps({**cut, "id": f"{cut['id']}-r{r}", "type": cut.get("type", "MonoCut")}) + "\n")
    return path


def decode_all(manifest: Path) -> dict[str, Any]:
    """Every cut's decoded audio by cut ID (the forward anchor must not pay for decoding)."""
    from mt2kd.cuts import iter_cut_dicts
    from mt2kd.extract._audio import CutAudio, load_cut_audio

    return {a.cut_id: a for a in map(load_cut_audio, iter_cut_dicts(str(manifest))) if isinstance(a, CutAudio)}


def job_batches(manifest: Path, audio: dict[str, Any], shard_hours: float, max_duration: float) -> list[list[Any]]:
    """The batches the job's tasks run: shard by shard, longest first, at most ``max_duration`` s each."""
    from mt2kd.extract._audio import batches, by_duration
    from mt2kd.extract._plan import make_plan

    plan = make_plan((str(manifest),), shard_hours)
    return [batch for shard in plan.shards
            for batch, _ in batches((audio[c["id"]] for c in by_duration(shard.cuts)), max_duration)]


def time_forward(batches: list[list[Any]], teachers: dict[str, Any], warmup: int = 0) -> float:
    """Seconds the teachers take on ``batches`` of decoded audio (after ``warmup`` untimed batches)."""
    import torch

    for batch in batches[:warmup]:
        for teacher in teachers.values():
            teacher.extract([a.samples for a in batch])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for batch in batches:
        for teacher in teachers.values():
            teacher.extract([a.samples for a in batch])  # returns numpy: the device work is done
    return time.perf_counter() - start


def run_baseline(manifest: Path, paths: dict[str, Path], args: argparse.Namespace, out: Path) -> None:
    """The baseline as a user's script: load the teachers, read the cuts, run, write float32 HDF5."""
    import torch
    from lhotse import CutSet, NumpyHdf5Writer
    from lhotse.dataset import SimpleCutSampler, UnsupervisedWaveformDataset

    from mt2kd.extract import TeacherConfig
    from mt2kd.extract._plugin import load_teachers

    torch.set_num_threads(args.baseline_threads)
    teachers = load_teachers([TeacherConfig(n, str(p)) for n, p in paths.items()], args.precision, args.device)
    cuts = CutSet.from_jsonl_lazy(manifest).to_eager().sort_by_duration(ascending=False)
    sampler = SimpleCutSampler(cuts, max_duration=args.max_duration)
    loader = torch.utils.data.DataLoader(UnsupervisedWaveformDataset(collate=False), sampler=sampler,
                                         batch_size=None, num_workers=0)
    with NumpyHdf5Writer(out) as writer:
        for batch in loader:
            waves = [np.asarray(a, np.float32).reshape(-1) for a in batch["audio"]]
            for name, teacher in teachers.items():
                for cut, value in zip(batch["cuts"], teacher.extract(waves)):
                    writer.store_array(f"{name}/{cut.id}", np.asarray(value, np.float32))


def timed_command(argv: list[str], env: dict[str, str] | None = None) -> float:
    """Wall seconds of a fresh process, from spawn to exit (imports and model loading included)."""
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                   env=None if env is None else {**os.environ, **env})
    return time.perf_counter() - start


def time_baseline(manifest: Path, paths: dict[str, Path], folder: Path) -> float:
    teachers = json.dumps({name: str(path) for name, path in paths.items()})
    return timed_command([sys.executable, __file__, *sys.argv[1:], "--baseline-in", str(manifest),
                          "--baseline-out", str(folder / "baseline.h5"), "--teachers-in", teachers])


@dataclasses.dataclass(frozen=True)
class JobTimes:
    """What one `mt2kd extract` run took, in seconds, and where its teachers waited."""

    wall: float  # process start to exit
    in_task: float  # summed over tasks: shard start to commit
    span: float  # first shard start to last commit
    to_first_shard: float  # process start to the first shard start: imports, cluster, teachers, plan
    waits: str  # the note on decoding and writing waits


def time_job(manifest: Path, paths: dict[str, Path], args: argparse.Namespace, workers: int, folder: Path,
             start_method: str = "forkserver") -> JobTimes:
    """`mt2kd extract` as a command, its events log read back."""
    events = folder / f"events-{workers}-{start_method}.jsonl"
    argv = [sys.executable, "-m", "mt2kd", "extract", "--cuts", str(manifest),
            "--store", str(folder / f"store-{workers}-{start_method}"), "--workers", str(workers),
            "--device", args.device, "--precision", args.precision,
            "--max-duration", str(args.max_duration), "--shard-hours", str(args.shard_hours),
            "--decode-threads", str(args.decode_threads), "--events-log", str(events)]
    for name, path in paths.items():
        argv += ["--teacher", f"{name}={path}"]
    launched = time.time()  # the events log's clock
    wall = timed_command(argv, {"DASK_MT2KD__LOCAL_START_METHOD": start_method})
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    began = {e["shard"]: e["time"] for e in lines if e["event"] == "start"}
    commits = [e for e in lines if e["event"] == "commit"]
    ended = [e["time"] for e in commits]
    in_task = sum(e["time"] - began[e["shard"]] for e in commits)
    decode, first, write = (100 * sum(e[key] for e in commits) / in_task
                            for key in ("decode_wait", "first_batch_wait", "write_wait"))
    waits = (f"job {workers} worker(s): teachers waited {decode:.1f}% of task time for decoding "
             f"({first:.1f}% for first batches), {write:.1f}% for writing")
    first = min(began.values())
    return JobTimes(wall, in_task, max(ended) - first, first - launched, waits)


SIZES: dict[str, dict[str, dict[str, Any]]] = {  # teacher dims per --size (all random weights)
    "tiny": {},  # make_tiny_checkpoints as written
    "small": {"whisper": {"n_audio_state": 384, "n_audio_head": 6, "n_audio_layer": 4},
              "beats": {"encoder_embed_dim": 256, "encoder_layers": 4, "encoder_ffn_embed_dim": 1024,
                        "encoder_attention_heads": 4}},
    "large": {"whisper": {"n_mels": 128, "n_audio_state": 1280, "n_audio_head": 20, "n_audio_layer": 32},
              "beats": {"encoder_layers": 12, "encoder_embed_dim": 768, "encoder_ffn_embed_dim": 3072,
                        "encoder_attention_heads": 12, "embed_dim": 512},
              "ecapa": {"channels": (1024, 1024, 1024, 1024, 3072), "attention_channels": 128}},
}


def enlarge(paths: dict[str, Path], size: str) -> None:
    """Rewrite the teachers at ``size``: large = whisper large-v3, released BEATs and ECAPA dims."""
    from mt2kd.extract._tiny import write_tiny_ecapa_checkpoint
    from mt2kd.extract.beats import write_tiny_beats_checkpoint
    from mt2kd.extract.whisper import write_tiny_whisper_checkpoint

    dims = SIZES[size]
    if "whisper" in dims:
        write_tiny_whisper_checkpoint(paths["whisper"], **dims["whisper"])
    if "beats" in dims:
        write_tiny_beats_checkpoint(paths["beats"], **dims["beats"])
    if "ecapa" in dims:
        write_tiny_ecapa_checkpoint(paths["ecapa"], **dims["ecapa"])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="extraction job vs forward-only and an HDF5 baseline")
    parser.add_argument("--repeat", type=int, default=5, help="copies of the 100 s demo corpus")
    parser.add_argument("--max-duration", type=float, default=30.0, help="s of audio per batch")
    parser.add_argument("--size", choices=sorted(SIZES), default="small",
                        help="small: whisper-tiny-sized encoder and a 4-layer BEATs; large: whisper large-v3, "
                             "released BEATs and ECAPA dims (GPU); always random weights")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", help="fp32, bf16 or fp16 (default: bf16 on cuda, fp32 on cpu)")
    parser.add_argument("--workers", default="", help="comma-separated job worker counts (default 1,2 cpu; 1 cuda)")
    parser.add_argument("--decode-threads", type=int, default=2, help="decoding threads per job worker")
    parser.add_argument("--baseline-threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads of the one-process baseline (default: every core, as the job's workers "
                             "together have)")
    parser.add_argument("--shard-hours", type=float, default=0.02, help="h of audio per shard")
    parser.add_argument("--compare-spawn", action="store_true",
                        help="also time each job with spawned workers (dask's default) instead of forked ones")
    for hidden in ("--baseline-in", "--baseline-out", "--teachers-in"):  # the baseline's own process
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    args.precision = args.precision or ("bf16" if cuda else "fp32")
    args.workers = [int(w) for w in (args.workers or ("1" if cuda else "1,2")).split(",")]
    return args


def main() -> None:
    args = parse_args()
    if args.baseline_in:
        paths = {name: Path(path) for name, path in json.loads(args.teachers_in).items()}
        run_baseline(Path(args.baseline_in), paths, args, Path(args.baseline_out))
        return
    import torch

    from mt2kd.extract import TeacherConfig, make_tiny_checkpoints
    from mt2kd.extract._cluster import local_torch_threads
    from mt2kd.extract._plugin import load_teachers

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        manifest = write_corpus(folder, args.repeat)
        paths = make_tiny_checkpoints(folder / "teachers")
        enlarge(paths, args.size)
        audio_s = sum(json.loads(line)["duration"] for line in gzip.open(manifest, "rt"))
        teachers = load_teachers([TeacherConfig(n, str(p)) for n, p in paths.items()], args.precision, args.device)
        batches = job_batches(manifest, decode_all(manifest), args.shard_hours, args.max_duration)
        forward: dict[int, float] = {}  # torch threads -> s: each job is held to a forward with its workers' threads
        for threads in sorted({local_torch_threads(w) for w in args.workers}):
            torch.set_num_threads(threads)
            forward[threads] = time_forward(batches, teachers, warmup=5)
        del teachers
        baseline = time_baseline(manifest, paths, folder)
        rows: list[tuple[str, float, float | None, bool]] = [  # name, seconds, anchor, is a wall time
            (f"forward only, {t} torch thread(s) (anchor)", s, s, True) for t, s in forward.items()]
        rows.append((f"baseline lhotse+HDF5, 1 process, {args.baseline_threads} thr.", baseline, None, True))
        notes: list[str] = []
        for workers in args.workers:
            anchor = forward[local_torch_threads(workers)]
            job = time_job(manifest, paths, args, workers, folder)
            notes.append(job.waits)
            rows.append((f"job {workers} worker(s): in-task sum", job.in_task, anchor, False))
            rows.append((f"job {workers} worker(s): start to first shard", job.to_first_shard, None, False))
            rows.append((f"job {workers} worker(s): first start-last commit", job.span, None, True))
            rows.append((f"job {workers} worker(s): wall", job.wall, None, True))
            if args.compare_spawn and not args.device.startswith("cuda"):  # CUDA workers are always spawned
                spawned = time_job(manifest, paths, args, workers, folder, "spawn")
                rows.append((f"job {workers} wkr(s) spawned: start to first shard", spawned.to_first_shard,
                             None, False))
                rows.append((f"job {workers} wkr(s) spawned: wall", spawned.wall, None, True))
    print(f"{audio_s:.0f} s of audio, {args.size} RANDOM-weight teachers on {args.device} ({args.precision}), "
          f"max_duration {args.max_duration:g} s, shards of {args.shard_hours:g} h, decode threads "
          f"{args.decode_threads}, {os.cpu_count()} CPU cores")
    print(f"{'row':<48} {'seconds':>8} {'audio-s/s':>10} {'x forward':>10} {'thr. vs baseline':>17}")
    for name, seconds, against, is_wall in rows:
        speed = f"{audio_s / seconds:10.1f}" if is_wall else f"{'-':>10}"
        versus = f"{baseline / seconds:17.2f}" if is_wall else f"{'-':>17}"
        ratio = f"{seconds / against:10.2f}" if against else f"{'-':>10}"
        print(f"{name:<48} {seconds:8.2f} {speed} {ratio} {versus}")
    print("\n".join(notes))

if __name__ == "__main__":
    main()
