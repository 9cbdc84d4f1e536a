"""The teacher benchmark: its FLOP count against torch's counter, and a quick end-to-end run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mt2kd.extract._frames import num_mel_frames, window_bounds
from mt2kd.extract._whisper_model import encode, load_whisper, log_mel_batch, pack_encoder, pad_to_window
from mt2kd.extract.whisper import write_tiny_whisper_checkpoint
from mt2kd.tests._bench import load_bench

BENCH = Path(__file__).resolve().parents[2] / "bench" / "teachers_bench.py"
DIMS = {"n_mels": 80, "n_audio_state": 64, "n_audio_head": 4, "n_audio_layer": 2}


@pytest.mark.parametrize("pad30", [False, True])
def test_whisper_flops_equal_torch_flop_counter(tmp_path: Path, pad30: bool) -> None:
    bench = load_bench("teachers_bench")
    encoder, _, _ = load_whisper(write_tiny_whisper_checkpoint(tmp_path / "w.pt", **DIMS))
    cuts = [np.zeros(n, np.float32) for n in (16_000 * 5, 16_000 * 3 + 170, 16_000 * 12)]
    windows = [cut[s:e] for cut in cuts for s, e in window_bounds(len(cut))]
    windows = [pad_to_window(w) for w in windows] if pad30 else windows
    mel = log_mel_batch(windows, DIMS["n_mels"], "cpu")
    weights = pack_encoder(encoder, "cpu", torch.float32)
    # the math backend runs attention as matmuls, which the counter sees
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.inference_mode():
        encode(weights, mel, [num_mel_frames(len(w)) for w in windows], layer=-1)
    assert counter.get_total_flops() == bench.whisper_flops(DIMS, cuts, pad30)


def test_quick_bench_prints_whisper_rows_and_anchor() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--quick", "--teachers", "whisper", "--audio-seconds", "10"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    rows = {line.split()[1]: line.split() for line in lines if line.startswith("whisper ")}
    assert sorted(rows) == ["pad30", "trim"]
    assert rows["pad30"][6] == "1.00x"  # the anchor against itself
    assert float(rows["trim"][5]) > 0 and float(rows["pad30"][5]) > 0  # audio-s/s measured
    assert any(line.startswith("anchor: whisper trim / pad30 = ") for line in lines)
