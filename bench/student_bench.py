"""Student benchmark: forward + backward time per 1000 s of audio and peak memory, Zipformer vs Conformer.

Both students are built at the paper's size (``paper``, the 63 M Conformer,
the anchor; ``zipformer-m``, the 66 M Zipformer), with the MT2KD heads, and
trained for one step each on the same batch: LibriSpeech-like cut durations
(see ``_common.py``), a run of neighbouring durations as a bucketing sampler
would batch them, filling ``--batch-seconds`` of audio; random 80-bin fbank
at 100 Hz. Time is the best of ``--repeat`` timed steps after a warm-up (the
students take turns, so a busy spell of a shared machine hits both),
scaled to 1000 s of audio; memory is the peak during the step beyond what
the model and its gradients already held (CUDA: ``max_memory_allocated``;
CPU: the peak resident set size, each model in a fresh process).

Usage::

    python bench/student_bench.py                     # CPU, 30 s batch (a 1000 s batch does not fit a CPU run)
    python bench/student_bench.py --quick             # tiny presets, smoke test
    python bench/student_bench.py --device cuda       # 1000 s batch, bf16 autocast
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from mt2kd._console import human_bytes

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import format_table, ratio, sample_durations  # noqa: E402

ANCHOR = "paper"  # the Conformer: every ratio is against it
PRESETS = ("paper", "zipformer-m")
QUICK_PRESETS = ("tiny", "zipformer-tiny")
REFERENCE_AUDIO_S = 1000.0  # s, the time column is per this much audio (the paper's batch per GPU)
FBANK_RATE = 100  # Hz


@dataclasses.dataclass(frozen=True)
class Row:
    preset: str  # StudentConfig preset
    parameters: int  # all of them, heads included
    audio_s: float  # s of audio in the batch
    step_s: float  # best forward + backward time of the batch
    peak_bytes: int  # memory the step needed beyond weights and gradients


def make_batch(batch_s: float, seed: int) -> list[float]:
    """Cut durations (s) of one batch: neighbouring durations around the median, adding up to ``batch_s``."""
    durations = np.sort(sample_durations(max(1.0, 4 * batch_s / 3600), seed=seed))
    start = len(durations) // 2
    chosen: list[float] = []
    while sum(chosen) < batch_s and start + len(chosen) < len(durations):
        chosen.append(float(durations[start + len(chosen)]))
    return chosen


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _batch(durations: list[float], device: str) -> tuple[Any, Any]:
    import torch

    lengths = torch.tensor([int(d * FBANK_RATE) for d in durations], device=device)
    generator = torch.Generator().manual_seed(0)
    fbank = torch.randn(len(durations), int(lengths.max()), 80, generator=generator).to(device) + 15
    return fbank, lengths


def _student(preset: str, device: str, seed: int) -> Any:
    import torch

    from mt2kd.train import Student, StudentConfig
    from mt2kd.train._zipformer import set_training_step

    torch.manual_seed(seed)
    model = Student(StudentConfig.preset(preset)).to(device).train()
    set_training_step(model, 100_000)  # past every schedule: the rates of a long run
    return model


def train_step(model: Any, fbank: Any, lengths: Any) -> None:
    """Forward (all three heads) and backward, in bf16 autocast on CUDA."""
    import torch

    on_cuda = fbank.device.type == "cuda"
    with torch.autocast(fbank.device.type, dtype=torch.bfloat16, enabled=on_cuda):
        out = model(fbank, lengths)
        loss = out.frames.float().abs().mean() + out.at_logits.float().mean() + out.sv_embedding.float().mean()
    loss.backward()
    if on_cuda:
        torch.cuda.synchronize()


def peak_memory(preset: str, durations: list[float], device: str, seed: int) -> int:
    """Bytes one step needs beyond the model and its gradients (run it in a fresh process on CPU)."""
    import torch

    model = _student(preset, device, seed)
    fbank, lengths = _batch(durations, device)
    train_step(model, fbank, lengths)  # gradients now exist, so the baseline below holds them
    model.zero_grad(set_to_none=False)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        train_step(model, fbank, lengths)
        return int(torch.cuda.max_memory_allocated() - base)
    base = _rss_bytes()  # activations freed; the peak so far is the first step's, as high as the next one's
    train_step(model, fbank, lengths)
    return _peak_rss_bytes() - base


def _peak_memory_in_child(preset: str, durations: list[float], seed: int) -> int:
    """:func:`peak_memory` on CPU in a fresh process of this script, so the peak RSS is this preset's alone."""
    # big blocks always mmapped, so freed activations leave the resident set and the baseline is honest
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    args = [sys.executable, __file__, "--peak-memory-of", preset, "--seed", str(seed),
            "--durations", ",".join(repr(d) for d in durations)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"measuring the memory of {preset} failed: {done.stderr[-2000:]}")
    return int(done.stdout.split()[-1])


def step_times(presets: tuple[str, ...], durations: list[float], device: str, repeat: int,
               seed: int) -> dict[str, float]:
    """Best step time of each preset; the presets take turns, so a busy spell of the machine hits them alike."""
    models = {p: _student(p, device, seed) for p in presets}
    fbank, lengths = _batch(durations, device)
    best = {p: float("inf") for p in presets}
    for model in models.values():
        train_step(model, fbank, lengths)  # warm-up
    for _ in range(repeat):
        for preset, model in models.items():
            start = time.perf_counter()
            train_step(model, fbank, lengths)
            best[preset] = min(best[preset], time.perf_counter() - start)
    return best


def run(presets: tuple[str, ...], batch_s: float, device: str, repeat: int, seed: int) -> list[Row]:
    """Every preset on the same batch: times taking turns, memory each on its own (CPU: in a fresh process)."""
    durations = make_batch(batch_s, seed)
    if device.startswith("cuda"):
        memory = {p: peak_memory(p, durations, device, seed) for p in presets}
    else:
        memory = {p: _peak_memory_in_child(p, durations, seed) for p in presets}
    times = step_times(presets, durations, device, repeat, seed)
    sizes = {p: _parameters(p) for p in presets}
    return [Row(p, sizes[p], sum(durations), times[p], memory[p]) for p in presets]


def _parameters(preset: str) -> int:
    from mt2kd.train import StudentConfig
    from mt2kd.train._model import count_parameters

    return count_parameters(StudentConfig.preset(preset))


def table(rows: list[Row]) -> str:
    anchor = next(r for r in rows if r.preset in (ANCHOR, "tiny"))
    per_ref = {r.preset: r.step_s * REFERENCE_AUDIO_S / r.audio_s for r in rows}
    body = [
        [r.preset, f"{r.parameters / 1e6:.1f} M", f"{r.audio_s:.0f}", f"{r.step_s:.2f}",
         f"{per_ref[r.preset]:.1f}", ratio(per_ref[r.preset], per_ref[anchor.preset]),
         human_bytes(r.peak_bytes), ratio(r.peak_bytes, anchor.peak_bytes)]
        for r in rows
    ]
    header = ["student", "params", "batch audio s", "fwd+bwd s", "s per 1000 s audio", "time ratio",
              "peak memory", "memory ratio"]
    return format_table(header, body)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--batch-seconds", type=float, default=None,
                        help="audio per batch (default: 1000 on CUDA, 30 on CPU)")
    parser.add_argument("--repeat", type=int, default=3, help="timed steps; the best counts")
    parser.add_argument("--quick", action="store_true", help="tiny presets (smoke test)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peak-memory-of", help=argparse.SUPPRESS)  # internal: one preset's memory, on CPU
    parser.add_argument("--durations", help=argparse.SUPPRESS)  # internal: its batch, comma-separated
    args = parser.parse_args(argv)
    if args.peak_memory_of:
        durations = [float(d) for d in args.durations.split(",")]
        print(peak_memory(args.peak_memory_of, durations, "cpu", args.seed))
        return
    batch_s = args.batch_seconds or (REFERENCE_AUDIO_S if args.device.startswith("cuda") else 30.0)
    presets = QUICK_PRESETS if args.quick else PRESETS
    rows = run(presets, batch_s, args.device, args.repeat, args.seed)
    precision = "bf16 autocast" if args.device.startswith("cuda") else "fp32"
    print(f"device {args.device} ({precision}), batch {rows[0].audio_s:.0f} s of audio in "
          f"{len(make_batch(batch_s, args.seed))} cuts, best of {args.repeat} steps; ratios against {rows[0].preset}")
    print(table(rows))


if __name__ == "__main__":
    main()
