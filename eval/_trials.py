"""Speaker verification trial lists: drawing them from speaker labels, and their file format.

A trial pairs two cuts; it is a target trial when both cuts have the same
speaker. Pairs are unordered (cosine scoring is symmetric), written with the
smaller cut ID first, and never repeated. The file format follows Kaldi's
``trials`` files: one ``enroll test target|nontarget`` line per trial. The
published VoxCeleb1 lists (``1 id10270/x6uYqmx31kE/00001.wav
id10270/8jEAjG6SegY/00008.wav``) are read as distributed and matched to cuts
by the last three parts of their recording's path (extension ignored).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from mt2kd.errors import ValidationError

Trial = tuple[str, str, bool]  # (enroll cut ID, test cut ID, is_target)

_LABELS = {"target": True, "nontarget": False}


def make_trials(speaker_of: Mapping[str, str], num_target: int, num_nontarget: int,
                seed: int = 0) -> list[Trial]:
    """Draw distinct target and non-target trials, deterministically.

    When fewer distinct pairs exist than asked for, all of them are returned
    (a small corpus gives a small list rather than repeated pairs). The
    result depends only on the mapping's contents and the seed, not on the
    mapping's order.

    Parameters
    ----------
    speaker_of : mapping cut ID -> speaker ID
    num_target, num_nontarget : int
        How many same-speaker and different-speaker trials to draw at most.
    seed : int
        Seed of the random generator.

    Examples
    --------
    >>> make_trials({"a1": "A", "a2": "A", "b1": "B"}, 5, 1, seed=0)[:1]
    [('a1', 'a2', True)]
    """
    if num_target < 0 or num_nontarget < 0:
        raise ValidationError(f"trial counts must be >= 0. Got {num_target} target, {num_nontarget} non-target.")
    cut_ids = sorted(speaker_of)
    speakers = [speaker_of[c] for c in cut_ids]
    rng = np.random.default_rng(seed)
    targets = _draw_targets(cut_ids, speakers, num_target, rng)
    nontargets = _draw_nontargets(cut_ids, speakers, num_nontarget, rng)
    return sorted([(a, b, True) for a, b in targets] + [(a, b, False) for a, b in nontargets])


def _draw_targets(cut_ids: list[str], speakers: list[str], num: int,
                  rng: np.random.Generator) -> set[tuple[str, str]]:
    groups: dict[str, list[str]] = defaultdict(list)
    for cut_id, speaker in zip(cut_ids, speakers):
        groups[speaker].append(cut_id)
    members = [groups[s] for s in sorted(groups) if len(groups[s]) > 1]
    num_pairs = np.array([len(m) * (len(m) - 1) // 2 for m in members], dtype=np.float64)
    num_possible = int(num_pairs.sum())

    def one() -> tuple[str, str]:
        # choosing the speaker by its pair count makes every same-speaker pair equally likely
        group = members[rng.choice(len(members), p=num_pairs / num_possible)]
        i, j = rng.choice(len(group), size=2, replace=False)
        return group[i], group[j]

    def every() -> list[tuple[str, str]]:
        return [pair for group in members for pair in itertools.combinations(group, 2)]

    return _draw(num, num_possible, one, every, rng)


def _draw_nontargets(cut_ids: list[str], speakers: list[str], num: int,
                     rng: np.random.Generator) -> set[tuple[str, str]]:
    counts: dict[str, int] = defaultdict(int)
    for speaker in speakers:
        counts[speaker] += 1
    num_cuts = len(cut_ids)
    num_same = sum(n * (n - 1) // 2 for n in counts.values())
    num_possible = num_cuts * (num_cuts - 1) // 2 - num_same

    def one() -> tuple[str, str] | None:
        i, j = rng.choice(num_cuts, size=2, replace=False)
        return None if speakers[i] == speakers[j] else (cut_ids[i], cut_ids[j])

    def every() -> list[tuple[str, str]]:
        return [(cut_ids[i], cut_ids[j]) for i, j in itertools.combinations(range(num_cuts), 2)
                if speakers[i] != speakers[j]]

    return _draw(num, num_possible, one, every, rng)


def _draw(num: int, num_possible: int, one: Callable[[], tuple[str, str] | None],
          every: Callable[[], list[tuple[str, str]]], rng: np.random.Generator) -> set[tuple[str, str]]:
    """``num`` distinct unordered pairs: enumerate when dense, reject duplicates when sparse."""
    if num == 0 or num_possible == 0:
        return set()
    if num_possible <= 2 * num:  # rejection would stall; the full list is small enough to build
        pairs = every()
        keep = rng.permutation(len(pairs))[:num]
        return {_ordered(*pairs[k]) for k in keep}
    chosen: set[tuple[str, str]] = set()
    while len(chosen) < num:
        pair = one()
        if pair is not None:
            chosen.add(_ordered(*pair))
    return chosen


def _ordered(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


def write_trials(trials: list[Trial], path: str | Path) -> None:
    """Write trials as ``enroll test target|nontarget`` lines."""
    lines = [f"{a} {b} {'target' if is_target else 'nontarget'}\n" for a, b, is_target in trials]
    Path(path).write_text("".join(lines), encoding="utf-8")


def read_trials(path: str | Path) -> list[Trial]:
    """Read a trials file written by :func:`write_trials` (or Kaldi).

    Examples
    --------
    >>> read_trials("trials.txt")  # doctest: +SKIP
    [('spk1-utt1', 'spk1-utt2', True), ...]
    """
    path = Path(path)
    trials: list[Trial] = []
    for num_line, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3 or fields[2] not in _LABELS:
            raise ValidationError(
                f"{path}:{num_line}: expected 'enroll test target|nontarget'. Got {line.strip()!r}.")
        trials.append((fields[0], fields[1], _LABELS[fields[2]]))
    return trials


# ---- the published VoxCeleb1 lists: '1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav' ----------
VOXCELEB_LABELS = {"1": True, "0": False}


def is_voxceleb_list(path: str | Path) -> bool:
    """True when the first non-empty line reads ``1|0 path path`` (VoxCeleb1's veri_test.txt and its variants)."""
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if fields:
            return len(fields) == 3 and fields[0] in VOXCELEB_LABELS
    return False


def read_voxceleb_trials(path: str | Path) -> list[tuple[str, str, bool]]:
    """(enroll path, test path, is_target) per line of a VoxCeleb1 list, paths as written.

    Examples
    --------
    >>> read_voxceleb_trials("veri_test2.txt")[:1]  # doctest: +SKIP
    [('id10270/x6uYqmx31kE/00001.wav', 'id10270/8jEAjG6SegY/00008.wav', True)]
    """
    path = Path(path)
    trials = []
    for num_line, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3 or fields[0] not in VOXCELEB_LABELS:
            raise ValidationError(f"{path}:{num_line}: expected '1|0 enroll.wav test.wav' (a VoxCeleb1 list). "
                                  f"Got {line.strip()!r}.")
        trials.append((fields[1], fields[2], VOXCELEB_LABELS[fields[0]]))
    return trials


def utterance_key(audio_path: str) -> str:
    """``speaker/video/utterance`` of an audio path, without extension: how a list entry names a recording.

    Examples
    --------
    >>> utterance_key("/data/voxceleb1/test/wav/id10270/x6uYqmx31kE/00001.flac")
    'id10270/x6uYqmx31kE/00001'
    """
    parts = Path(audio_path).with_suffix("").parts
    return "/".join(parts[-3:])


def match_voxceleb_trials(entries: list[tuple[str, str, bool]],
                          audio_of: Mapping[str, str]) -> tuple[list[Trial], int]:
    """Trials on cut IDs from list entries on recording paths; and how many entries name a recording no cut has.

    ``audio_of`` maps cut ID -> the path of its audio (its recording's source).
    """
    cut_of = {utterance_key(path): cut_id for cut_id, path in audio_of.items()}
    trials: list[Trial] = []
    for enroll, test, is_target in entries:
        a, b = cut_of.get(utterance_key(enroll)), cut_of.get(utterance_key(test))
        if a is not None and b is not None:
            trials.append((a, b, is_target))
    return trials, len(entries) - len(trials)
