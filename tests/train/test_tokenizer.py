"""The BPE vocabulary: fixed blank/unk ids, round trips, determinism, bytes in a checkpoint, the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mt2kd.errors import ConfigError, ValidationError
from mt2kd.train import Tokenizer, cut_text, train_bpe

DEMO_SPEECH = Path(__file__).resolve().parents[2] / "workflows" / "demo" / "speech_cuts.jsonl.gz"
DEMO_EVENTS = DEMO_SPEECH.with_name("events_cuts.jsonl.gz")


@pytest.fixture(scope="module")
def demo_texts() -> list[str]:
    from mt2kd.cuts import open_manifest

    return [t for t in (cut_text(c) for c in open_manifest(DEMO_SPEECH)) if t]


def test_blank_is_id_0_and_never_produced(demo_texts: list[str]) -> None:
    tok = Tokenizer.train(demo_texts, vocab_size=80)
    assert tok.vocab_size == 80
    assert tok.pieces()[:2] == ["<blk>", "<unk>"] and tok.blank_id == 0
    ids = tok.encode(demo_texts + ["<blk> and ZQX unseen letters"])
    assert all(0 not in row for row in ids)
    assert 1 in ids[-1]  # '<' and the unseen letters are unknown, not the blank


def test_round_trip_gives_the_texts_back(demo_texts: list[str]) -> None:
    tok = Tokenizer.train(demo_texts, vocab_size=100)
    ids = tok.encode(demo_texts)
    assert all(1 not in row for row in ids)  # every character of the training texts is covered
    assert tok.decode(ids) == demo_texts
    assert tok.decode([[0, *ids[0], 0]]) == demo_texts[:1]  # blanks decode to nothing


def test_training_is_deterministic(demo_texts: list[str]) -> None:
    first = Tokenizer.train(demo_texts, vocab_size=100).to_bytes()
    assert Tokenizer.train(demo_texts, vocab_size=100).to_bytes() == first
    assert Tokenizer.train(demo_texts, vocab_size=90).to_bytes() != first


def test_bytes_travel_in_a_checkpoint_and_load_back(tmp_path: Path, demo_texts: list[str]) -> None:
    import torch

    tok = Tokenizer.train(demo_texts, vocab_size=100)
    torch.save({"tokenizer": tok.to_bytes()}, tmp_path / "ckpt.pt")
    loaded = Tokenizer.from_bytes(torch.load(tmp_path / "ckpt.pt", weights_only=True)["tokenizer"])
    assert loaded.to_bytes() == tok.to_bytes()
    assert loaded.encode(demo_texts) == tok.encode(demo_texts)


def test_a_small_corpus_gives_fewer_pieces_than_asked(demo_texts: list[str], caplog) -> None:
    tok = Tokenizer.train(demo_texts, vocab_size=5000)
    assert 100 < tok.vocab_size < 5000
    assert "allow only" in caplog.text


def test_bad_inputs_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="at least one transcript"):
        Tokenizer.train(["", "  "], vocab_size=50)
    with pytest.raises(ValidationError, match="sentencepiece model"):
        Tokenizer.from_bytes(b"not a model")
    with pytest.raises(ConfigError, match="bpe.model"):
        Tokenizer.load(tmp_path)
    with pytest.raises(ValidationError, match=r"token ids must be in \[0, "):
        Tokenizer.train(["a b c"], vocab_size=10).decode([[10_000]])


def test_train_bpe_cli_writes_a_loadable_folder(tmp_path: Path, demo_texts: list[str]) -> None:
    out = tmp_path / "bpe"
    run = subprocess.run([sys.executable, "-m", "mt2kd", "train", "bpe", "--cuts", str(DEMO_SPEECH),
                          "--vocab-size", "100", "--out", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "100 pieces" in run.stdout
    tok = Tokenizer.load(out)
    assert tok.to_bytes() == train_bpe([DEMO_SPEECH], 100, tmp_path / "again").to_bytes()
    assert (out / "tokens.txt").read_text().splitlines()[0] == "<blk> 0"
    assert tok.decode(tok.encode(demo_texts)) == demo_texts


def test_train_bpe_cli_refuses_cuts_without_text(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "mt2kd", "train", "bpe", "--cuts", str(DEMO_EVENTS),
                          "--out", str(tmp_path / "bpe")], capture_output=True, text=True)
    assert run.returncode == 1
    assert "no cut with supervision text" in run.stderr and "events_cuts" in run.stderr


def test_cut_text_joins_supervisions_in_time_order() -> None:
    from lhotse import SupervisionSegment
    from lhotse.testing.dummies import dummy_cut

    cut = dummy_cut(0, duration=4.0, supervisions=[
        SupervisionSegment("b", "r", start=2.0, duration=1.0, text="world  again"),
        SupervisionSegment("a", "r", start=0.0, duration=1.0, text="hello"),
        SupervisionSegment("c", "r", start=3.0, duration=1.0),  # no text: ignored
    ])
    assert cut_text(cut) == "hello world again"
    assert cut_text(dummy_cut(1, supervisions=[])) is None
