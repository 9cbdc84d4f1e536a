"""Cut IDs renamed by ``CutSet.repeat()`` (``<id>_repeatN``) read their original's outputs, once.

A manifest written from a repeated CutSet (as the training loader builds
them) must score exactly like the original manifest: its copies are found in
the store under the original ID, the same audio is not scored twice, and no
speaker trial pairs a cut with its own copy.
"""

from __future__ import annotations

import dataclasses

import pytest

from mt2kd.cuts import canonical_cut_id, stored_cut_id, strip_repeat_suffix
from mt2kd.errors import ValidationError
from mt2kd.eval._asr import score_transcripts
from mt2kd.eval._config import EvalConfig
from mt2kd.eval._run import evaluate
from mt2kd.eval._trials import read_trials, write_trials


def _repeated_manifest(corpus, folder, times: int = 2):
    from lhotse import CutSet

    path = folder / "repeated.jsonl.gz"
    CutSet.from_file(corpus.manifest).repeat(times).to_file(path)
    return path


def test_id_rules() -> None:
    assert strip_repeat_suffix("a_repeat3_repeat0") == "a"
    assert stored_cut_id("a_repeat1", {"a"}) == "a"
    assert stored_cut_id("a_repeat1", {"a", "a_repeat1"}) == "a_repeat1"  # a stored suffixed ID is its own cut
    assert stored_cut_id("b_repeat1", {"a"}) is None
    assert canonical_cut_id("b_repeat1", {"a"}) == "b"


def test_repeated_manifest_scores_like_the_original(corpus, store, tmp_path) -> None:
    repeated = _repeated_manifest(corpus, tmp_path, times=3)
    original = evaluate(EvalConfig(cuts=(str(corpus.manifest),), stores=(str(store),),
                                   labels=str(corpus.labels_file))).report
    report = evaluate(EvalConfig(cuts=(str(repeated),), stores=(str(store),), labels=str(corpus.labels_file))).report
    num_cuts = len(corpus.cut_ids)
    assert report["counts"]["num_cuts"] == num_cuts and report["counts"]["num_cuts_in_store"] == num_cuts
    assert report["counts"]["num_repeat_copies_merged"] == 2 * num_cuts
    assert report["counts"]["num_cuts_with_beats"] == num_cuts
    assert report["teachers"] == original["teachers"]
    # 4 speakers x C(3, 2) target pairs: no cut paired with its own copy
    assert (report["trials"]["num_target"], report["trials"]["num_nontarget"]) == (12, 54)


def test_trials_file_with_repeat_ids_maps_to_the_cuts(corpus, store, tmp_path) -> None:
    base = EvalConfig(cuts=(str(corpus.manifest),), stores=(str(store),), labels=str(corpus.labels_file))
    plain = tmp_path / "plain.txt"
    write_trials(evaluate_trials(base), plain)
    suffixed = tmp_path / "suffixed.txt"
    trials = [(f"{a}_repeat0", f"{b}_repeat1", target) for a, b, target in read_trials(plain)]
    first = corpus.cut_ids[0]
    write_trials(trials + [(f"{first}_repeat0", f"{first}_repeat1", True)], suffixed)
    want = evaluate(dataclasses.replace(base, trials=str(plain))).report
    got = evaluate(dataclasses.replace(base, trials=str(suffixed))).report
    assert got["teachers"]["ecapa"]["eer"] == want["teachers"]["ecapa"]["eer"]
    assert got["trials"]["num_trials_same_cut_dropped"] == 1
    assert got["teachers"]["ecapa"]["eer"]["num_trials_skipped"] == 0


def evaluate_trials(config: EvalConfig):
    from mt2kd.eval._inputs import load_cuts
    from mt2kd.eval._scoring import build_trials

    trials, _ = build_trials(load_cuts(config.cuts), None, 20, 20, seed=3)
    return trials


def test_transcripts_of_repeat_copies_count_once() -> None:
    refs = {"a": "the cat sat", "b": "a dog"}
    hyps = {"a_repeat0": "the bat sat", "a_repeat1": "the bat sat", "b_repeat0": "a dog"}
    report = score_transcripts(refs, hyps)
    assert report["num_cuts"] == 2 and report["num_missing_hyps"] == 0
    assert report["wer"]["num_substitutions"] == 1 and report["wer"]["num_ref"] == 5
    assert score_transcripts({"a_repeat0": "x y", "a_repeat1": "x y"}, {"a": "x"})["wer"]["num_ref"] == 2
    with pytest.raises(ValidationError, match="every copy of cut 'a' must have the same hypothesis"):
        score_transcripts(refs, {"a_repeat0": "the cat", "a_repeat1": "the bat"})
