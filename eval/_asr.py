"""Speech recognition scoring: word and character error rates, CTC greedy decoding.

Everything here is plain Python/numpy so that scores can be recomputed from
text files alone. Text is compared exactly as given (split on whitespace);
normalisation (case, punctuation) is the caller's business, because what is
"the same word" differs between corpora.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Container, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from mt2kd.cuts import canonical_cut_id
from mt2kd.errors import ValidationError

Unit = TypeVar("Unit")  # an output symbol: a token string or a token id

# sentencepiece marks the start of a word with this character
WORD_BOUNDARY = "\u2581"


@dataclasses.dataclass(frozen=True)
class WerResult:
    """Edit-operation counts of an alignment of hypotheses against references.

    The same counts serve for words (WER) and characters (CER).
    """

    num_substitutions: int  # reference units replaced by another unit
    num_deletions: int  # reference units missing from the hypothesis
    num_insertions: int  # hypothesis units with no reference counterpart
    num_ref: int  # reference units in total (the denominator)

    @property
    def num_errors(self) -> int:
        return self.num_substitutions + self.num_deletions + self.num_insertions

    @property
    def rate(self) -> float:
        """Errors per reference unit; NaN when there are no reference units."""
        return self.num_errors / self.num_ref if self.num_ref else float("nan")

    @property
    def wer(self) -> float:
        return self.rate

    def __add__(self, other: WerResult) -> WerResult:
        return WerResult(
            self.num_substitutions + other.num_substitutions,
            self.num_deletions + other.num_deletions,
            self.num_insertions + other.num_insertions,
            self.num_ref + other.num_ref,
        )

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "num_errors": self.num_errors, "rate": self.rate}


def edit_counts(ref: Sequence[Any], hyp: Sequence[Any]) -> WerResult:
    """Levenshtein alignment of two unit sequences, counted by operation.

    The total is the edit distance; for its split into operations, the
    backtrace takes a match or substitution whenever one lies on a cheapest
    path, so a swapped word counts as one substitution, not a deletion plus
    an insertion.

    Examples
    --------
    >>> r = edit_counts("a b c".split(), "a x c d".split())
    >>> (r.num_substitutions, r.num_deletions, r.num_insertions)
    (1, 0, 1)
    """
    cost = _cost_matrix(*_as_ids(ref, hyp))
    return _backtrace(cost, ref, hyp)


def _as_ids(ref: Sequence[Any], hyp: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    vocab: dict[Any, int] = {}
    ref_ids = np.array([vocab.setdefault(unit, len(vocab)) for unit in ref], dtype=np.int64)
    hyp_ids = np.array([vocab.setdefault(unit, len(vocab)) for unit in hyp], dtype=np.int64)
    return ref_ids, hyp_ids


def _cost_matrix(ref: np.ndarray, hyp: np.ndarray) -> np.ndarray:
    """cost[i, j]: fewest edits turning ref[:i] into hyp[:j], one numpy row at a time."""
    n, m = len(ref), len(hyp)
    steps = np.arange(m + 1)
    cost = np.zeros((n + 1, m + 1), dtype=np.int64)
    cost[0] = steps
    for i in range(1, n + 1):
        prev = cost[i - 1]
        best = np.empty(m + 1, dtype=np.int64)
        best[0] = i
        best[1:] = np.minimum(prev[:-1] + (hyp != ref[i - 1]), prev[1:] + 1)  # substitute/match, delete
        # insertions chain left to right: cost[i, j] = min_k (best[k] + j - k), a running minimum
        cost[i] = np.minimum.accumulate(best - steps) + steps
    return cost


def _backtrace(cost: np.ndarray, ref: Sequence[Any], hyp: Sequence[Any]) -> WerResult:
    i, j = len(ref), len(hyp)
    subs = dels = ins = 0
    while i > 0 or j > 0:
        if i > 0 and j > 0 and cost[i, j] == cost[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]):
            subs += int(ref[i - 1] != hyp[j - 1])
            i, j = i - 1, j - 1
        elif i > 0 and cost[i, j] == cost[i - 1, j] + 1:
            dels += 1
            i -= 1
        else:
            ins += 1
            j -= 1
    return WerResult(subs, dels, ins, len(ref))


def wer(refs: Sequence[str], hyps: Sequence[str]) -> WerResult:
    """Corpus word error rate: edit counts summed over utterance pairs.

    Examples
    --------
    >>> wer(["the cat sat"], ["the bat sat down"]).wer  # 1 sub + 1 ins over 3 words
    0.6666666666666666
    """
    return _corpus_counts(refs, hyps, str.split)


def cer(refs: Sequence[str], hyps: Sequence[str]) -> WerResult:
    """Corpus character error rate, whitespace removed before aligning.

    Dropping whitespace keeps CER meaningful for unsegmented scripts and
    stops word-boundary mistakes from counting twice.

    Examples
    --------
    >>> cer(["ab c"], ["abd"]).rate  # 'abc' vs 'abd': one substitution of three
    0.3333333333333333
    """
    return _corpus_counts(refs, hyps, lambda text: list("".join(text.split())))


def _corpus_counts(refs: Sequence[str], hyps: Sequence[str], units: Any) -> WerResult:
    if len(refs) != len(hyps):
        raise ValidationError(f"refs and hyps must have the same length. Got {len(refs)} and {len(hyps)}.")
    total = WerResult(0, 0, 0, 0)
    for ref, hyp in zip(refs, hyps):
        total = total + edit_counts(units(ref), units(hyp))
    return total


def ctc_greedy_decode(logits: np.ndarray, tokens: Sequence[Unit], blank: int = 0,
                      num_frames: int | None = None) -> list[Unit]:
    """Best-path CTC decoding of one utterance: argmax, collapse repeats, drop blanks.

    Parameters
    ----------
    logits : array [T, V]
        Per-frame scores (logits or log-probabilities: argmax is the same).
    tokens : sequence of V symbols
        The output vocabulary (strings, or ``range(V)`` for ids); ``tokens[blank]`` is the blank symbol.
    blank : int
        Index of the blank symbol.
    num_frames : int, optional
        Valid frames; frames after it are padding and ignored.

    Examples
    --------
    >>> lg = np.eye(3)[[1, 1, 0, 1, 2, 2]]  # a a <b> a b b
    >>> ctc_greedy_decode(lg, ["<b>", "a", "b"])
    ['a', 'a', 'b']
    """
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[1] != len(tokens):
        raise ValidationError(
            f"logits must have shape [num_frames, {len(tokens)}] (one column per token). Got {logits.shape}.")
    if not 0 <= blank < len(tokens):
        raise ValidationError(f"blank must index the token list (0..{len(tokens) - 1}). Got {blank}.")
    best = logits[:num_frames].argmax(axis=1)
    # a new symbol starts wherever the argmax changes; repeats merge unless a blank separates them
    starts = np.ones(len(best), dtype=bool)
    starts[1:] = best[1:] != best[:-1]
    return [tokens[k] for k in best[starts] if k != blank]


def pieces_to_text(pieces: Sequence[str]) -> str:
    """Join sentencepiece pieces into words (the boundary mark becomes a space).

    Examples
    --------
    >>> pieces_to_text(["\u2581he", "llo", "\u2581world"])
    'hello world'
    """
    return " ".join("".join(pieces).replace(WORD_BOUNDARY, " ").split())


def read_transcripts(path: str | Path) -> dict[str, str]:
    """Read a ``cut_id text`` file (one utterance per line, ID and text split by spaces or a tab; text may be empty).

    Examples
    --------
    >>> read_transcripts("ref.txt")  # doctest: +SKIP
    {'cut-1': 'hello world', ...}
    """
    path = Path(path)
    transcripts: dict[str, str] = {}
    for num_line, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        cut_id, *rest = line.split(maxsplit=1)  # Kaldi text files separate the ID by a space or a tab
        text = rest[0] if rest else ""
        if cut_id in transcripts:
            raise ValidationError(f"{path}:{num_line}: cut ID {cut_id!r} occurs twice. Expected one line per cut.")
        transcripts[cut_id] = " ".join(text.split())
    return transcripts


def merge_repeat_transcripts(transcripts: Mapping[str, str], known: Container[str], what: str) -> dict[str, str]:
    """Key ``_repeatN`` copies by their original cut ID (an ID in ``known`` stays as it is).

    Examples
    --------
    >>> merge_repeat_transcripts({"a_repeat0": "hi", "a_repeat1": "hi"}, set(), "reference")
    {'a': 'hi'}
    """
    merged: dict[str, str] = {}
    source: dict[str, str] = {}
    for cut_id, text in transcripts.items():
        key = canonical_cut_id(cut_id, known)
        if key in merged and merged[key] != text:
            raise ValidationError(f"every copy of cut {key!r} must have the same {what}. Got {merged[key]!r} "
                                  f"for {source[key]!r} and {text!r} for {cut_id!r}.")
        merged[key], source[key] = text, source.get(key, cut_id)
    return merged


def score_transcripts(refs: Mapping[str, str], hyps: Mapping[str, str]) -> dict[str, Any]:
    """WER and CER of hypotheses keyed by cut ID against references.

    A reference without a hypothesis scores as an empty hypothesis (all
    deletions) and is counted in ``num_missing_hyps``: a decoder that skips a
    cut must not look better for it. A hypothesis without a reference is an
    error, since it means the two files describe different test sets.

    Transcripts of ``CutSet.repeat()`` copies (``<id>_repeatN``) count once,
    under the original ID, on both sides; copies must agree on their text.
    """
    refs = merge_repeat_transcripts(refs, set(), "reference")
    hyps = merge_repeat_transcripts(hyps, refs, "hypothesis")
    unknown = sorted(set(hyps) - set(refs))
    if unknown:
        raise ValidationError(
            f"every hypothesis must have a reference. Got {len(unknown)} without, e.g. {unknown[:3]}.")
    cut_ids = sorted(refs)
    ref_texts = [refs[c] for c in cut_ids]
    hyp_texts = [hyps.get(c, "") for c in cut_ids]
    return {
        "num_cuts": len(cut_ids),
        "num_missing_hyps": sum(c not in hyps for c in cut_ids),
        "wer": wer(ref_texts, hyp_texts).to_dict(),
        "cer": cer(ref_texts, hyp_texts).to_dict(),
    }
