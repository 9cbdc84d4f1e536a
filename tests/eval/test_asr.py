"""WER/CER on hand-checked strings, CTC greedy decoding, transcript files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from mt2kd.cli import main
from mt2kd.errors import ValidationError
from mt2kd.eval._asr import (
    cer,
    ctc_greedy_decode,
    edit_counts,
    pieces_to_text,
    read_transcripts,
    score_transcripts,
    wer,
)


def test_wer_one_of_each_edit():
    # the cat sat on the mat / the bat sat the mat down:
    # cat->bat (sub), 'on' missing (del), 'down' extra (ins): 3 errors over 6 words
    result = wer(["the cat sat on the mat"], ["the bat sat the mat down"])
    assert (result.num_substitutions, result.num_deletions, result.num_insertions) == (1, 1, 1)
    assert result.num_ref == 6
    assert result.wer == pytest.approx(0.5)


def test_wer_sums_over_utterances():
    # pair 1: perfect (2 words); pair 2: empty hyp -> 3 deletions over 3 words
    result = wer(["a b", "c d e"], ["a b", ""])
    assert (result.num_deletions, result.num_ref) == (3, 5)
    assert result.wer == pytest.approx(3 / 5)


def test_edit_counts_prefers_substitution():
    # one substitution beats a deletion plus an insertion
    result = edit_counts(["x"], ["y"])
    assert (result.num_substitutions, result.num_deletions, result.num_insertions) == (1, 0, 0)


def test_edit_counts_total_matches_plain_levenshtein():
    rng = np.random.default_rng(0)

    def distance(a, b):  # textbook two-row recursion, independent of the backtrace
        prev = list(range(len(b) + 1))
        for i, x in enumerate(a, 1):
            cur = [i]
            for j, y in enumerate(b, 1):
                cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
            prev = cur
        return prev[-1]

    for _ in range(30):
        a = list(rng.integers(0, 4, rng.integers(0, 8)))
        b = list(rng.integers(0, 4, rng.integers(0, 8)))
        result = edit_counts(a, b)
        assert result.num_errors == distance(a, b)
        # every reference word is matched, substituted or deleted; every hypothesis word too
        assert result.num_deletions - result.num_insertions == len(a) - len(b)


def test_cer_ignores_spaces():
    # 'hello world' vs 'helo world': 1 deletion over 10 characters
    assert cer(["hello world"], ["helo  world"]).rate == pytest.approx(0.1)


def test_wer_length_mismatch_is_an_error():
    with pytest.raises(ValidationError, match="same length"):
        wer(["a"], [])


def test_ctc_greedy_collapses_repeats_and_drops_blanks():
    tokens = ["<b>", "\u2581he", "llo", "\u2581you"]
    path = [1, 1, 0, 2, 2, 0, 0, 3, 3, 3, 0]  # he he _ llo llo _ _ you you you _
    logits = np.full((len(path) + 2, 4), -5.0)
    logits[np.arange(len(path)), path] = 5.0
    logits[len(path):, 2] = 5.0  # padding frames that would add 'llo'
    pieces = ctc_greedy_decode(logits, tokens, blank=0, num_frames=len(path))
    assert pieces == ["\u2581he", "llo", "\u2581you"]
    assert pieces_to_text(pieces) == "hello you"


def test_ctc_greedy_blank_separates_repeats():
    logits = np.eye(2)[[1, 0, 1]]  # a _ a -> two a's
    assert ctc_greedy_decode(logits, ["_", "a"]) == ["a", "a"]


def test_ctc_greedy_shape_error():
    with pytest.raises(ValidationError, match="one column per token"):
        ctc_greedy_decode(np.zeros((3, 2)), ["_", "a", "b"])


def test_transcript_files(tmp_path):
    ref = tmp_path / "ref.txt"
    hyp = tmp_path / "hyp.txt"
    ref.write_text("c1 the cat sat\nc2 hello world\nc3 good\n")
    hyp.write_text("c1 the bat sat\nc2 hello world\n")
    report = score_transcripts(read_transcripts(ref), read_transcripts(hyp))
    # c1: one sub; c3 missing -> one deletion; 6 reference words
    assert report["num_missing_hyps"] == 1
    assert report["wer"]["num_errors"] == 2
    assert report["wer"]["rate"] == pytest.approx(2 / 6)


def test_transcript_files_split_the_id_at_a_tab_too(tmp_path):
    ref, hyp = tmp_path / "ref.txt", tmp_path / "hyp.txt"
    ref.write_text("u1\tthe cat sat\nu2 a b\nu3\n")
    hyp.write_text("u1\tthe bat  sat\nu2\ta b\nu3\t\n")
    assert read_transcripts(ref) == {"u1": "the cat sat", "u2": "a b", "u3": ""}
    report = score_transcripts(read_transcripts(ref), read_transcripts(hyp))
    assert report["wer"]["num_errors"] == 1 and report["wer"]["rate"] == pytest.approx(1 / 5)


def test_transcript_duplicate_id_is_an_error(tmp_path):
    path = tmp_path / "ref.txt"
    path.write_text("c1 a\nc1 b\n")
    with pytest.raises(ValidationError, match="occurs twice"):
        read_transcripts(path)


def test_wer_command(tmp_path):
    ref, hyp = tmp_path / "ref.txt", tmp_path / "hyp.txt"
    ref.write_text("a the cat sat on the mat\n")
    hyp.write_text("a the bat sat the mat down\n")
    result = CliRunner().invoke(main, ["eval", "wer", "--ref", str(ref), "--hyp", str(hyp), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["wer"]["rate"] == pytest.approx(0.5)  # 1 sub + 1 del + 1 ins over 6 words
