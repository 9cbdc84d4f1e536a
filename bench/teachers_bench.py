"""Teacher throughput benchmark: audio-seconds per second of each frozen teacher.

Random-weight teachers of the real architectures, written in their real
checkpoint formats and loaded through ``load_teacher`` like released ones,
run over LibriSpeech-like cut durations (1-35 s, mean about 12.3 s; see
``_common.py``) of noise audio. Cuts are sorted by duration and batched up to
``--batch-seconds`` of padded audio, as the extraction job batches them; the
time covers everything ``extract`` does (log-mel or fbank, the encoder,
copying the outputs back to numpy).

- whisper: large-v3 dims (128 mels, 1280 wide, 32 blocks, 20 heads) on a GPU,
  base dims (80 mels, 512 wide, 6 blocks) on a CPU, tiny dims with
  ``--quick``; ``trim`` against ``pad30``, the anchor of the table.
- beats and ecapa at their released sizes (12 x 768 with 527 classes;
  C = 1024 with 192-D embeddings), when their modules are present.
- hubert, wavlm and wav2vec2 (last layer, 25 Hz stacked) at torchaudio's
  base bundles' sizes on a CPU, the large ones on a GPU, toy with ``--quick``.
- whisper-text: whisper's own greedy decoding at the whisper row's dims with
  the real vocabulary (random weights: every window decodes to its token limit).

On a GPU the table also gives the achieved TFLOP/s of the whisper encoder
(matmul and convolution FLOPs of the padded batches it really ran) against a
bf16 matmul peak measured in the same run.

Usage::

    python bench/teachers_bench.py                      # CPU, a couple of minutes
    python bench/teachers_bench.py --quick              # CPU smoke test, ~30 s
    python bench/teachers_bench.py --device cuda        # large-v3 dims, bf16
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SAMPLE_RATE, format_table, ratio, sample_durations  # noqa: E402

ANCHOR = "whisper pad30"  # every throughput is compared to this row
WINDOW_S = 30.0  # s, whisper's window
MAX_CUT_S = 35.0  # s, longest cut the durations can hold
PEAK_MATMUL_SIZE = 8192  # square bf16 matmul used to measure the peak
PEAK_REPEATS = 20  # timed matmuls

WHISPER_SIZES: dict[str, dict[str, int]] = {
    "large-v3": {"n_mels": 128, "n_audio_state": 1280, "n_audio_head": 20, "n_audio_layer": 32},
    "base": {"n_mels": 80, "n_audio_state": 512, "n_audio_head": 8, "n_audio_layer": 6},
    "tiny": {"n_mels": 80, "n_audio_state": 384, "n_audio_head": 6, "n_audio_layer": 4},
}
BEATS_RELEASED = {"encoder_layers": 12, "encoder_embed_dim": 768, "encoder_ffn_embed_dim": 3072,
                  "encoder_attention_heads": 12, "embed_dim": 512}  # iter3+ AS2M, 527 classes
SSL_BUNDLES = {  # teacher -> (torchaudio.pipelines bundle benched on CPU, on GPU)
    "hubert": ("HUBERT_BASE", "HUBERT_LARGE"),
    "wavlm": ("WAVLM_BASE", "WAVLM_LARGE"),
    "wav2vec2": ("WAV2VEC2_BASE", "WAV2VEC2_LARGE_LV60K"),
}
ECAPA_RELEASED: dict[str, Any] = {"channels": (1024, 1024, 1024, 1024, 3072), "attention_channels": 128,
                  "lin_neurons": 192}  # spkrec-ecapa-voxceleb


@dataclasses.dataclass(frozen=True)
class Setting:
    """How much to run, chosen from the device and ``--quick``."""

    device: str  # "cpu" or "cuda[:N]"
    precision: str  # "fp32" on CPU; "bf16" on GPU unless asked otherwise
    whisper_size: str  # key of WHISPER_SIZES
    audio_s: float  # total audio per teacher and mode
    batch_s: float  # padded audio per batch
    repeat: int  # timed passes; the best counts (the machine may be shared)
    seed: int  # durations and audio


@dataclasses.dataclass(frozen=True)
class Row:
    name: str  # "whisper trim", "beats", ...
    size: str  # what dims it ran at
    audio_s: float  # audio seconds processed
    wall_s: float  # seconds of extract calls
    flops: float | None  # encoder FLOPs executed (whisper only)

    @property
    def speed(self) -> float:
        return self.audio_s / self.wall_s


# ---------------------------------------------------------------- inputs


def make_cuts(audio_s: float, seed: int) -> list[np.ndarray]:
    """Noise cuts with LibriSpeech-like durations, longest first (as a duration-sorted job batches)."""
    durations = sample_durations(audio_s / 3600.0, seed)
    rng = np.random.default_rng(seed)
    pool = (0.1 * rng.standard_normal(int(MAX_CUT_S * SAMPLE_RATE) + 1)).astype(np.float32)
    cuts = [pool[: int(round(d * SAMPLE_RATE))] for d in durations]  # views: no memory per cut
    return sorted(cuts, key=len, reverse=True)


def make_batches(cuts: list[np.ndarray], batch_s: float, pad30: bool) -> list[list[np.ndarray]]:
    """Greedy batches of at most ``batch_s`` padded seconds (every cut costs 30 s per window in pad30)."""
    batches: list[list[np.ndarray]] = []
    for cut in cuts:
        batch = batches[-1] if batches else []
        longest = max([len(c) for c in batch] + [len(cut)]) / SAMPLE_RATE
        padded = (WINDOW_S * np.ceil(longest / WINDOW_S) if pad30 else longest) * (len(batch) + 1)
        if batch and padded <= batch_s:
            batch.append(cut)
        else:
            batches.append([cut])
    return batches


# ---------------------------------------------------------------- FLOPs


def whisper_flops(dims: dict[str, int], batch: Sequence[np.ndarray], pad30: bool) -> float:
    """Matmul and convolution FLOPs of one padded whisper batch (2 per multiply-add)."""
    from mt2kd.extract._frames import WINDOW_MEL_FRAMES, num_mel_frames, window_bounds

    windows = [e - s for cut in batch for s, e in window_bounds(len(cut))]
    num_mel = WINDOW_MEL_FRAMES if pad30 else max(num_mel_frames(w) for w in windows)
    num_pos = (num_mel + 1) // 2
    d, n_mels = dims["n_audio_state"], dims["n_mels"]
    convs = 2 * 3 * (n_mels * d * num_mel + d * d * num_pos)
    # per block: qkv 3d^2, out d^2, mlp 8d^2 multiply-adds per position; scores and mixing 2 T d
    block = 2 * (12 * num_pos * d * d + 2 * num_pos * num_pos * d)
    return float(len(windows) * (convs + dims["n_audio_layer"] * block))


def measure_bf16_peak(device: str) -> float:
    """TFLOP/s of a large bf16 matmul on ``device``: the roof the encoder is compared to."""
    import torch

    a = torch.randn(PEAK_MATMUL_SIZE, PEAK_MATMUL_SIZE, device=device, dtype=torch.bfloat16)
    b = torch.randn_like(a)
    for _ in range(3):
        torch.matmul(a, b)
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(PEAK_REPEATS):
        torch.matmul(a, b)
    torch.cuda.synchronize(device)
    return 2 * PEAK_MATMUL_SIZE**3 * PEAK_REPEATS / (time.perf_counter() - start) / 1e12


# ---------------------------------------------------------------- running


def time_teacher(teacher: Any, batches: list[list[np.ndarray]], repeat: int,
                 flops_of: Callable[[list[np.ndarray]], float] | None) -> tuple[float, float | None]:
    """Best wall seconds of ``extract`` over all batches (after one warm-up batch), and FLOPs executed."""
    teacher.extract(batches[-1])  # warm-up: kernels, allocator, lazy imports
    walls = []
    for _ in range(repeat):
        start = time.perf_counter()
        for batch in batches:
            teacher.extract(batch)  # returns numpy: the device has finished when this returns
        walls.append(time.perf_counter() - start)
    wall = min(walls)
    flops = sum(flops_of(b) for b in batches) if flops_of else None
    return wall, flops


def bench_whisper(setting: Setting, folder: Path, cuts: list[np.ndarray]) -> list[Row]:
    from mt2kd.extract import load_teacher
    from mt2kd.extract.whisper import write_tiny_whisper_checkpoint

    dims = WHISPER_SIZES[setting.whisper_size]
    path = write_tiny_whisper_checkpoint(folder / "whisper.pt", seed=setting.seed, **dims)
    audio_s = sum(len(c) for c in cuts) / SAMPLE_RATE
    rows = []
    for mode in ("trim", "pad30"):
        teacher = load_teacher("whisper", path, mode=mode, precision=setting.precision).to(setting.device)
        pad30 = mode == "pad30"
        wall, flops = time_teacher(teacher, make_batches(cuts, setting.batch_s, pad30), setting.repeat,
                                   lambda b: whisper_flops(dims, b, pad30))
        rows.append(Row(f"whisper {mode}", setting.whisper_size, audio_s, wall, flops))
        del teacher
    return rows


def bench_other(name: str, setting: Setting, folder: Path, cuts: list[np.ndarray]) -> list[Row]:
    """beats or ecapa at released size; no rows (and a note) when its module is not there yet."""
    try:
        module = importlib.import_module(f"mt2kd.extract.{name}")
    except ModuleNotFoundError as e:
        print(f"note: skipping {name}: {e}")
        return []
    from mt2kd.extract import load_teacher

    if name == "beats":
        path = module.write_tiny_beats_checkpoint(folder / "beats.pt", seed=setting.seed, **BEATS_RELEASED)
    else:
        from mt2kd.extract._tiny import write_tiny_ecapa_checkpoint

        path = write_tiny_ecapa_checkpoint(folder / "ecapa", seed=setting.seed, **ECAPA_RELEASED)
    teacher = load_teacher(name, path, precision=setting.precision).to(setting.device)
    wall, _ = time_teacher(teacher, make_batches(cuts, setting.batch_s, pad30=False), setting.repeat, None)
    return [Row(name, "released", sum(len(c) for c in cuts) / SAMPLE_RATE, wall, None)]


def bench_ssl(name: str, setting: Setting, folder: Path, cuts: list[np.ndarray], quick: bool) -> list[Row]:
    """hubert, wavlm or wav2vec2 at a torchaudio bundle's size (base on CPU, large on GPU; toy with --quick)."""
    import torchaudio.pipelines

    from mt2kd.extract import load_teacher
    from mt2kd.extract.ssl import write_tiny_ssl_checkpoint

    bundle = "tiny" if quick else SSL_BUNDLES[name][setting.device.startswith("cuda")]
    params = {} if quick else {k: v for k, v in getattr(torchaudio.pipelines, bundle)._params.items()
                               if k != "aux_num_out"}
    path = write_tiny_ssl_checkpoint(folder / f"{name}.pt", name, seed=setting.seed, **params)
    teacher = load_teacher(name, path, layers="-1", precision=setting.precision).to(setting.device)
    wall, _ = time_teacher(teacher, make_batches(cuts, setting.batch_s, pad30=False), setting.repeat, None)
    return [Row(name, bundle, sum(len(c) for c in cuts) / SAMPLE_RATE, wall, None)]


def bench_whisper_text(setting: Setting, folder: Path, cuts: list[np.ndarray], quick: bool) -> list[Row]:
    """whisper-text: openai-whisper decoding (greedy, language given) at the whisper row's dims.

    Random weights rarely end a window early, so each window decodes its
    whole ``n_text_ctx // 2`` tokens (224 as released; 16 with ``--quick``): a worst case of real decoding.
    """
    from mt2kd.extract import load_teacher
    from mt2kd.extract.whisper import write_tiny_whisper_checkpoint

    audio = dict(WHISPER_SIZES[setting.whisper_size])
    n_mels = audio.pop("n_mels")
    dims = {**audio, "n_text_state": audio["n_audio_state"], "n_text_head": audio["n_audio_head"],
            "n_text_layer": audio["n_audio_layer"], "n_text_ctx": 32 if quick else 448, "n_vocab": 51866 if n_mels == 128 else 51865}
    path = write_tiny_whisper_checkpoint(folder / "whisper-text.pt", n_mels=n_mels, seed=setting.seed, **dims)
    precision = "fp16" if setting.precision != "fp32" else "fp32"  # whisper decodes in fp16 or fp32
    teacher = load_teacher("whisper-text", path, language="en", precision=precision).to(setting.device)
    wall, _ = time_teacher(teacher, make_batches(cuts, setting.batch_s, pad30=True), setting.repeat, None)
    return [Row("whisper-text", setting.whisper_size, sum(len(c) for c in cuts) / SAMPLE_RATE, wall, None)]


def report(rows: list[Row], setting: Setting, peak: float | None) -> str:
    anchor = next((r.speed for r in rows if r.name == ANCHOR), None)
    header = ["teacher", "size", "audio s", "wall s", "audio-s/s", f"vs {ANCHOR}", "TFLOP/s", "% of peak"]
    table = []
    for r in rows:
        tflops = r.flops / r.wall_s / 1e12 if r.flops is not None and setting.device != "cpu" else None
        share = f"{100 * tflops / peak:.1f}%" if tflops is not None and peak else "-"
        table.append([r.name, r.size, r.audio_s, r.wall_s, r.speed, ratio(r.speed, anchor), tflops, share])
    lines = [f"device {setting.device}, precision {setting.precision}, batches of <= {setting.batch_s:.0f} "
             f"padded audio-s", format_table(header, table)]
    trim = next((r.speed for r in rows if r.name == "whisper trim"), None)
    lines.append(f"anchor: whisper trim / pad30 = {ratio(trim, anchor)}")
    if peak:
        lines.append(f"measured bf16 matmul peak: {peak:.1f} TFLOP/s ({PEAK_MATMUL_SIZE}^3)")
    return "\n".join(lines)


def make_setting(args: argparse.Namespace) -> Setting:
    gpu = args.device.startswith("cuda")
    precision = args.precision or ("bf16" if gpu else "fp32")
    size = args.whisper_size or ("large-v3" if gpu else "tiny" if args.quick else "base")
    default_audio = (30.0 if args.quick else 120.0) if not gpu else (600.0 if args.quick else 12000.0)
    default_batch = 600.0 if gpu else 60.0
    repeat = args.repeat or (1 if args.quick else 2)
    return Setting(args.device, precision, size, args.audio_seconds or default_audio,
                   args.batch_seconds or default_batch, repeat, args.seed)


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="default: bf16 on GPU, fp32 on CPU")
    parser.add_argument("--whisper-size", choices=sorted(WHISPER_SIZES), help="default: large-v3 GPU, base CPU")
    parser.add_argument("--audio-seconds", type=float, help="audio per teacher and mode")
    parser.add_argument("--batch-seconds", type=float, help="padded audio per batch")
    parser.add_argument("--teachers", default="whisper,beats,ecapa,hubert,wavlm,wav2vec2,whisper-text",
                        help="comma-separated subset")
    parser.add_argument("--repeat", type=int, help="timed passes, best counts (default 2; 1 with --quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="small sizes, seconds; a smoke test")
    args = parser.parse_args(argv)
    setting = make_setting(args)
    cuts = make_cuts(setting.audio_s, setting.seed)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="teachers_bench_") as tmp:
        for name in args.teachers.split(","):
            # the others are far slower than tiny whisper on a CPU: a quick run gives them less audio
            few = cuts[len(cuts) // 2:][:2] if args.quick and setting.device == "cpu" else cuts
            if name == "whisper":
                rows += bench_whisper(setting, Path(tmp), cuts)
            elif name in SSL_BUNDLES:
                rows += bench_ssl(name, setting, Path(tmp), few, args.quick)
            elif name == "whisper-text":
                rows += bench_whisper_text(setting, Path(tmp), few, args.quick)
            else:
                rows += bench_other(name, setting, Path(tmp), few)
    peak = measure_bf16_peak(setting.device) if setting.device.startswith("cuda") else None
    text = report(rows, setting, peak)
    print(text)
    return text


if __name__ == "__main__":
    main()
