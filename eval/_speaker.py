"""Speaker verification scores: cosine trials, DET curve and equal error rate.

A trial is accepted when its score is at or above the threshold. The DET
curve has one point per distinct score (tied trials move together), plus the
"accept nothing" point at +inf. The EER is where the miss rate and the
false-alarm rate cross on that curve, with linear interpolation between the
two points that straddle the crossing, so it does not jump by whole trials on
small trial lists.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from mt2kd.errors import ValidationError


@dataclasses.dataclass(frozen=True)
class DetCurve:
    """Error rates at every distinct threshold, from strictest to most lenient."""

    thresholds: np.ndarray  # [K] decreasing; the first is +inf (nothing accepted)
    false_alarm_rate: np.ndarray  # [K] non-target trials accepted / non-target trials
    miss_rate: np.ndarray  # [K] target trials rejected / target trials


def det_curve(scores: np.ndarray, labels: np.ndarray) -> DetCurve:
    """Miss and false-alarm rates at every distinct score.

    Examples
    --------
    >>> c = det_curve(np.array([0.9, 0.2]), np.array([1, 0]))
    >>> c.miss_rate.tolist(), c.false_alarm_rate.tolist()
    ([1.0, 0.0, 0.0], [0.0, 0.0, 1.0])
    """
    scores, labels = _check_trials(scores, labels)
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_labels = scores[order], labels[order]
    last_of_run = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    num_target_accepted = np.cumsum(sorted_labels)[last_of_run]
    num_nontarget_accepted = np.cumsum(~sorted_labels)[last_of_run]
    num_target, num_nontarget = labels.sum(), (~labels).sum()
    return DetCurve(
        thresholds=np.r_[np.inf, sorted_scores[last_of_run]],
        false_alarm_rate=np.r_[0.0, num_nontarget_accepted / num_nontarget],
        miss_rate=np.r_[1.0, 1.0 - num_target_accepted / num_target],
    )


def eer(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Equal error rate and the threshold where it is reached.

    Parameters
    ----------
    scores : array [N]
        Trial scores, higher meaning "same speaker" (e.g. cosine similarity).
    labels : array [N]
        1/True for target (same-speaker) trials, 0/False for non-target ones.

    Returns
    -------
    eer : float
        Error rate in [0, 1] where miss and false-alarm rates are equal.
    threshold : float
        Threshold interpolated like the rate; +inf cannot occur since the
        crossing never lies before the first real threshold's point.

    Examples
    --------
    >>> eer(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0]))
    (0.5, 0.8)
    """
    curve = det_curve(scores, labels)
    gap = curve.miss_rate - curve.false_alarm_rate  # falls from +1 to -1
    k = int(np.argmax(gap <= 0))  # first point at or past the crossing; k >= 1 since gap[0] = 1
    weight = gap[k - 1] / (gap[k - 1] - gap[k])
    rate = curve.false_alarm_rate[k - 1] + weight * (curve.false_alarm_rate[k] - curve.false_alarm_rate[k - 1])
    if k == 1:  # the previous point is "accept nothing" at +inf: use the first real threshold
        threshold = curve.thresholds[1]
    else:
        threshold = curve.thresholds[k - 1] + weight * (curve.thresholds[k] - curve.thresholds[k - 1])
    return float(rate), float(threshold)


def _check_trials(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 1 or scores.shape != labels.shape:
        raise ValidationError(f"scores and labels must be 1-D of equal length. Got {scores.shape} and {labels.shape}.")
    if not np.all(np.isfinite(scores)):
        raise ValidationError("trial scores must be finite. Got NaN or infinite values.")
    labels = labels.astype(bool)
    if labels.all() or not labels.any():
        raise ValidationError(
            f"trials need both target and non-target trials. Got {int(labels.sum())} target of {len(labels)}.")
    return scores, labels


def cosine_scores(embeddings: Mapping[str, np.ndarray],
                  trials: Sequence[tuple[str, str, bool]]) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity of each trial's two embeddings, and the trials' labels.

    Examples
    --------
    >>> emb = {"a": np.array([1.0, 0.0]), "b": np.array([1.0, 1.0])}
    >>> cosine_scores(emb, [("a", "b", True)])[0].round(4).tolist()
    [0.7071]
    """
    unit = {cut_id: _unit(cut_id, np.asarray(vec, dtype=np.float64)) for cut_id, vec in embeddings.items()}
    scores = np.array([float(unit[enroll] @ unit[test]) for enroll, test, _ in trials])
    labels = np.array([bool(is_target) for _, _, is_target in trials])
    return scores, labels


def _unit(cut_id: str, vec: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(vec)
    if not np.isfinite(norm) or norm == 0:
        raise ValidationError(f"cut {cut_id!r}: speaker embedding must be finite and non-zero. Got norm {norm}.")
    return vec / norm
