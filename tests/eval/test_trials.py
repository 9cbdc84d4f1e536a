"""Trial lists: determinism, balance, correctness of labels, file round trip."""

from __future__ import annotations

import pytest

from mt2kd.errors import ValidationError
from mt2kd.eval._trials import make_trials, read_trials, write_trials


def _corpus(num_speakers=6, num_cuts_each=5):
    return {f"s{s}-u{u}": f"s{s}" for s in range(num_speakers) for u in range(num_cuts_each)}


def test_trials_are_deterministic_and_order_free():
    speaker_of = _corpus()
    shuffled = dict(reversed(list(speaker_of.items())))
    assert make_trials(speaker_of, 20, 30, seed=3) == make_trials(shuffled, 20, 30, seed=3)
    assert make_trials(speaker_of, 20, 30, seed=3) != make_trials(speaker_of, 20, 30, seed=4)


@pytest.mark.parametrize("num_target,num_nontarget", [(20, 30), (55, 200), (60, 400)])
def test_trials_balance_and_labels(num_target, num_nontarget):
    speaker_of = _corpus()  # 6 speakers x C(5,2)=10 -> 60 target pairs; 435 - 60 = 375 non-target
    trials = make_trials(speaker_of, num_target, num_nontarget, seed=0)
    targets = [t for t in trials if t[2]]
    assert len(targets) == min(num_target, 60)
    assert len(trials) - len(targets) == min(num_nontarget, 375)
    for enroll, test, is_target in trials:
        assert enroll < test
        assert (speaker_of[enroll] == speaker_of[test]) == is_target
    assert len({(a, b) for a, b, _ in trials}) == len(trials)


def test_trials_singletons_give_no_targets():
    trials = make_trials({"a": "A", "b": "B", "c": "C"}, 5, 5, seed=0)
    assert [t for t in trials if t[2]] == []
    assert len(trials) == 3


def test_negative_count_is_an_error():
    with pytest.raises(ValidationError, match=">= 0"):
        make_trials({"a": "A"}, -1, 0)


def test_trials_file_round_trip(tmp_path):
    trials = make_trials(_corpus(3, 3), 4, 4, seed=1)
    path = tmp_path / "trials"
    write_trials(trials, path)
    assert read_trials(path) == trials
    assert path.read_text().splitlines()[0].split()[2] in ("target", "nontarget")


def test_trials_file_bad_line(tmp_path):
    path = tmp_path / "trials"
    path.write_text("a b target\na b same\n")
    with pytest.raises(ValidationError, match="trials:2"):
        read_trials(path)
