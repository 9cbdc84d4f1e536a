"""Decoding speed: transducer greedy vs modified beam search, and CTC greedy.

A random-weight student (``tiny`` on a CPU by default, ``paper`` with
``--device cuda``) encodes noise cuts with LibriSpeech-like durations (1-35
s, mean about 12.3 s; see ``_common.py``), sorted by duration and batched up
to ``--batch-seconds`` of padded audio. The ASR heads have the released
recipe's sizes (500 BPE pieces, prediction network and joiner 512 wide)
whatever the encoder, since they set the cost of the search.

Random heads emit a token on almost every frame, which no trained model
does; the joiner's blank bias is therefore raised until about
``--emit-rate`` of the frames (0.12: LibriSpeech's ~3 BPE tokens per second
at 25 Hz frames) start with a token, so hypotheses grow as they would.

The encoder runs once; each search then decodes the same encoder output
(best of ``--repeat`` passes). The table gives utterances/s, the real-time
factor (encoder + search seconds per audio second) and each search's speed
relative to greedy search measured in the same run (the anchor).

Usage::

    python bench/decode_bench.py                   # CPU, tiny encoder, about a minute
    python bench/decode_bench.py --quick           # CPU smoke test
    python bench/decode_bench.py --device cuda     # paper-size encoder
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SAMPLE_RATE, format_table, ratio, sample_durations  # noqa: E402

ANCHOR = "greedy"  # every speed is compared to this row
VOCAB_SIZE = 500  # BPE pieces of the recipe
HEAD_DIM = 512  # prediction network and joiner width of the recipe
MAX_CUT_S = 35.0  # s, longest cut the durations can hold


@dataclasses.dataclass(frozen=True)
class Setting:
    device: str  # "cpu" or "cuda[:N]"
    student: str  # StudentConfig preset
    audio_s: float  # total audio decoded by each search
    batch_s: float  # padded audio per batch
    beams: tuple[int, ...]  # beam sizes of the modified beam search rows
    emit_rate: float  # share of frames on which the random heads start a token
    repeat: int  # timed passes per search; the best counts (the machine may be shared)
    seed: int


@dataclasses.dataclass(frozen=True)
class Row:
    name: str  # "greedy", "beam 4", "ctc greedy"
    num_cuts: int
    audio_s: float
    search_s: float  # seconds of decode() calls
    encoder_s: float  # seconds of the encoder over the same batches
    num_tokens: int  # tokens emitted in total

    @property
    def cuts_per_s(self) -> float:
        return self.num_cuts / (self.encoder_s + self.search_s)

    @property
    def rtf(self) -> float:
        return (self.encoder_s + self.search_s) / self.audio_s


def make_batches(setting: Setting) -> list[tuple[Any, Any]]:
    """(fbank [B, T, 80], num_frames [B]) batches of noise cuts, longest first."""
    import torch

    from mt2kd.train import compute_fbank

    rng = np.random.default_rng(setting.seed)
    pool = (0.1 * rng.standard_normal(int(MAX_CUT_S * SAMPLE_RATE) + 1)).astype(np.float32)
    durations = sorted(sample_durations(setting.audio_s / 3600.0, setting.seed), reverse=True)
    feats = [compute_fbank(pool[: int(round(d * SAMPLE_RATE))]) for d in durations]
    batches, current = [], []  # type: ignore[var-annotated]
    for f in feats:
        if current and (len(current) + 1) * current[0].shape[0] / 100.0 > setting.batch_s:
            batches.append(current)
            current = []
        current.append(f)
    batches.append(current)
    return [(torch.nn.utils.rnn.pad_sequence(b, batch_first=True), torch.tensor([x.shape[0] for x in b]))
            for b in batches]


def build_models(setting: Setting) -> tuple[Any, Any]:
    import torch

    from mt2kd.train import AsrConfig, AsrHeads, Student, StudentConfig

    torch.manual_seed(setting.seed)
    student = Student(StudentConfig.preset(setting.student)).to(setting.device).eval()
    cfg = AsrConfig(vocab_size=VOCAB_SIZE, decoder_dim=HEAD_DIM, joiner_dim=HEAD_DIM)
    heads = AsrHeads(cfg, student.config.model_dim).to(setting.device).eval()
    return student, heads


def encode(student: Any, batches: list[tuple[Any, Any]], device: str) -> tuple[list[tuple[Any, Any]], float]:
    import torch

    outputs = []
    start = time.perf_counter()
    with torch.no_grad():
        for fbank, num_frames in batches:
            out = student(fbank.to(device), num_frames.to(device))
            outputs.append((out.hidden_states[-1], out.num_frames))
    _sync(device)
    return outputs, time.perf_counter() - start


def set_emit_rate(heads: Any, outputs: list[tuple[Any, Any]], emit_rate: float) -> None:
    """Raise both heads' blank bias until about ``emit_rate`` of the first batch's frames prefer a token."""
    import torch

    decoder, joiner = heads.transducer()
    enc, lens = outputs[0]
    frames = enc[torch.arange(enc.shape[1], device=enc.device)[None] < lens[:, None]]
    with torch.no_grad():
        start = decoder(torch.zeros(1, decoder.context_size, dtype=torch.int64, device=enc.device))[:, -1]
        _raise_blank(joiner.output.bias, joiner(joiner.encoder_proj(frames), joiner.decoder_proj(start)),
                     emit_rate)
        _raise_blank(heads.ctc_head.bias, heads.ctc_head(frames), emit_rate)


def _raise_blank(bias: Any, logits: Any, emit_rate: float) -> None:
    import torch

    margin = logits[:, 1:].max(dim=1).values - logits[:, 0]  # how far blank is behind the best token
    bias[0] += torch.quantile(margin.float(), 1.0 - emit_rate)


def time_search(heads: Any, outputs: list[tuple[Any, Any]], method: str, beam: int, setting: Setting
                ) -> tuple[float, int]:
    from mt2kd.eval import decode

    walls, num_tokens = [], 0
    for _ in range(setting.repeat):
        start = time.perf_counter()
        tokens = [decode(heads, enc, lens, method=method, beam=beam).tokens for enc, lens in outputs]
        walls.append(time.perf_counter() - start)  # decode returns lists: the device is done
        num_tokens = sum(len(t) for batch in tokens for t in batch)
    return min(walls), num_tokens


def run(setting: Setting) -> list[Row]:
    batches = make_batches(setting)
    student, heads = build_models(setting)
    encode(student, batches[-1:], setting.device)  # warm-up: kernels, allocator
    outputs, encoder_s = encode(student, batches, setting.device)
    set_emit_rate(heads, outputs, setting.emit_rate)
    num_cuts = sum(len(n) for _, n in batches)
    audio_s = sum(float(n.sum()) for _, n in batches) / 100.0
    searches = [("greedy", "greedy", 1)] + [(f"beam {k}", "beam", k) for k in setting.beams] + \
        [("ctc greedy", "ctc", 1)]
    rows = []
    for name, method, beam in searches:
        search_s, num_tokens = time_search(heads, outputs, method, beam, setting)
        rows.append(Row(name, num_cuts, audio_s, search_s, encoder_s, num_tokens))
    return rows


def report(rows: list[Row], setting: Setting) -> str:
    anchor = next(r.cuts_per_s for r in rows if r.name == ANCHOR)
    header = ["search", "cuts", "audio s", "encoder s", "search s", "utt/s", "RTF", f"vs {ANCHOR}", "tokens/s audio"]
    table = [[r.name, r.num_cuts, r.audio_s, r.encoder_s, r.search_s, r.cuts_per_s, r.rtf,
              ratio(r.cuts_per_s, anchor), r.num_tokens / r.audio_s] for r in rows]
    title = (f"device {setting.device}, student {setting.student} (random weights), heads V={VOCAB_SIZE} "
             f"d={HEAD_DIM}, batches of <= {setting.batch_s:.0f} padded audio-s, emit rate {setting.emit_rate}")
    return "\n".join([title, format_table(header, table)])


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def make_setting(args: argparse.Namespace) -> Setting:
    gpu = args.device.startswith("cuda")
    audio = args.audio_seconds or (30.0 if args.quick else 600.0 if gpu else 120.0)
    beams = tuple(int(b) for b in args.beams.split(","))
    return Setting(args.device, args.student or ("paper" if gpu else "tiny"), audio,
                   args.batch_seconds or (600.0 if gpu else 60.0), beams, args.emit_rate,
                   args.repeat or (1 if args.quick else 2), args.seed)


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--student", choices=["tiny", "paper"], help="default: paper on GPU, tiny on CPU")
    parser.add_argument("--audio-seconds", type=float, help="audio decoded by each search")
    parser.add_argument("--batch-seconds", type=float, help="padded audio per batch")
    parser.add_argument("--beams", default="1,4,8", help="comma-separated beam sizes")
    parser.add_argument("--emit-rate", type=float, default=0.12, help="share of frames starting a token")
    parser.add_argument("--repeat", type=int, help="timed passes, best counts (default 2; 1 with --quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="30 s of audio, one pass: a smoke test")
    args = parser.parse_args(argv)
    setting = make_setting(args)
    text = report(run(setting), setting)
    print(text)
    return text


if __name__ == "__main__":
    main()
