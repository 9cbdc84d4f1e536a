"""The decoding benchmark: its blank calibration, and a small end-to-end run printing every row."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mt2kd.tests._bench import load_bench

BENCH = Path(__file__).resolve().parents[2] / "bench" / "decode_bench.py"


@pytest.mark.parametrize("emit_rate", [0.05, 0.12, 0.3])
def test_blank_bias_makes_the_asked_share_of_frames_start_a_token(emit_rate: float) -> None:
    bench = load_bench("decode_bench")
    setting = bench.Setting("cpu", "tiny", 0.0, 0.0, (4,), emit_rate, 1, 0)
    torch.manual_seed(0)
    _, heads = bench.build_models(setting)
    lens = torch.tensor([300, 200])
    enc = torch.randn(2, 300, 32) * (torch.arange(300)[None, :, None] < lens[:, None, None])
    bench.set_emit_rate(heads, [(enc, lens)], emit_rate)
    frames = torch.cat([enc[0], enc[1, :200]])
    with torch.no_grad():
        decoder, joiner = heads.transducer()
        start = decoder(torch.zeros(1, 2, dtype=torch.int64))[:, -1]
        transducer = joiner(joiner.encoder_proj(frames), joiner.decoder_proj(start)).argmax(-1)
        ctc = heads.ctc_head(frames).argmax(-1)
    assert (transducer != 0).float().mean().item() == pytest.approx(emit_rate, abs=0.01)
    assert (ctc != 0).float().mean().item() == pytest.approx(emit_rate, abs=0.01)


def test_small_run_prints_every_search_against_greedy() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--audio-seconds", "4", "--beams", "1,2", "--repeat", "1"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = {re.split(r"\s{2,}", line)[0]: line for line in done.stdout.splitlines()[3:]}  # title, header, rule
    assert sorted(rows) == ["beam 1", "beam 2", "ctc greedy", "greedy"]
    assert "1.00x" in rows["greedy"]
