"""Student benchmark: forward + backward time per 1000 s of audio and peak memory, Zipformer vs Conformer.

Both students are built at the paper's size (``paper``, the 63 M Conformer,
the anchor; ``zipformer-m``, the 66 M Zipformer), with the MT2KD heads, and
trained for one step each on the same batch: LibriSpeech-like cut durations
(see ``_common.py``), a run of neighbouring durations as a bucketing sampler
would batch them, filling ``--batch-seconds`` of audio; random 80-bin fbank
at 100 Hz. Time is the best of ``--repeat`` timed steps after a warm-up,
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
import multiprocessing
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import format_table, human_bytes, ratio, sample_durations  # noqa: E402

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


def measure(preset: str, durations: list[float], device: str, repeat: int, seed: int) -> Row:
    """One training step of ``preset`` on the batch, ``repeat`` times after a warm-up."""
    import torch

    from mt2kd.train import Student, StudentConfig
    from mt2kd.train._zipformer import set_training_step

    torch.manual_seed(seed)
    model = Student(StudentConfig.preset(preset)).to(device).train()
    set_training_step(model, 100_000)  # past every schedule: the rates of a long run
    lengths = torch.tensor([int(d * FBANK_RATE) for d in durations], device=device)
    fbank = torch.randn(len(durations), int(lengths.max()), 80, device=device) + 15
    use_bf16 = device.startswith("cuda")

    def step() -> None:
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=use_bf16):
            out = model(fbank, lengths)
            loss = out.frames.float().abs().mean() + out.at_logits.float().mean() + out.sv_embedding.float().mean()
        loss.backward()
        if use_bf16:
            torch.cuda.synchronize()

    step()  # warm-up; gradients now exist, so the baseline below holds them
    model.zero_grad(set_to_none=False)
    if use_bf16:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:  # what is resident now (activations freed); the peak so far is the warm-up step's
        base = _rss_bytes()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if use_bf16 else _peak_rss_bytes()
    return Row(preset, sum(p.numel() for p in model.parameters()), sum(durations), min(times), peak - base)


def _measure_in_child(args: tuple[Any, ...]) -> Row:
    return measure(*args)


def run(presets: tuple[str, ...], batch_s: float, device: str, repeat: int, seed: int) -> list[Row]:
    """Every preset on the same batch; on CPU each in a fresh process so peak RSS is its own."""
    durations = make_batch(batch_s, seed)
    if device.startswith("cuda"):
        return [measure(p, durations, device, repeat, seed) for p in presets]
    # big blocks always mmapped, so freed activations leave the resident set and the baseline is honest
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    context = multiprocessing.get_context("spawn")
    rows = []
    for preset in presets:
        with context.Pool(1) as pool:
            rows.append(pool.apply(_measure_in_child, ((preset, durations, device, repeat, seed),)))
    return rows


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
    args = parser.parse_args(argv)
    batch_s = args.batch_seconds or (REFERENCE_AUDIO_S if args.device.startswith("cuda") else 30.0)
    presets = QUICK_PRESETS if args.quick else PRESETS
    rows = run(presets, batch_s, args.device, args.repeat, args.seed)
    precision = "bf16 autocast" if args.device.startswith("cuda") else "fp32"
    print(f"device {args.device} ({precision}), batch {rows[0].audio_s:.0f} s of audio in "
          f"{len(make_batch(batch_s, args.seed))} cuts, best of {args.repeat} steps; ratios against {rows[0].preset}")
    print(table(rows))


if __name__ == "__main__":
    main()
