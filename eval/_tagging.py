"""Audio tagging scores: average precision per class and their mean (mAP).

The per-class AP follows the step-wise definition that scikit-learn's
``average_precision_score`` uses: precision at every distinct score, weighted
by the recall gained there, with tied scores forming one step. Classes with
no positive example have no defined AP; they are reported as NaN and left out
of the mean, which is how AudioSet evaluations usually treat them.
"""

from __future__ import annotations

import numpy as np

from mt2kd.errors import ValidationError
from mt2kd.train import events_to_multi_hot, load_label_list  # one reader of labels for training and eval

__all__ = ["average_precision", "events_to_multi_hot", "load_label_list", "mean_average_precision"]


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision of one class (NaN without positives).

    Examples
    --------
    >>> average_precision(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.6]))  # (1 + 2/3) / 2
    0.8333333333333333
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    num_pos = int(labels.sum())
    if num_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_labels = scores[order], labels[order]
    # the last position of each run of equal scores is where a threshold can sit
    last_of_run = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    tp = np.cumsum(sorted_labels)[last_of_run]
    num_kept = np.flatnonzero(last_of_run) + 1
    precision = tp / num_kept
    recall_gain = np.diff(np.r_[0, tp]) / num_pos
    return float(np.sum(recall_gain * precision))


def mean_average_precision(labels: np.ndarray, scores: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean over classes of the per-class AP, for multi-label data.

    Parameters
    ----------
    labels : array [N, C]
        Multi-hot targets (0/1 or bool).
    scores : array [N, C]
        Any monotone score per class (logits or probabilities).

    Returns
    -------
    mAP : float
        Mean AP over the classes with at least one positive; NaN if none has.
    per_class_ap : array [C]
        AP of each class, NaN for classes without positives.

    Examples
    --------
    >>> y = np.array([[1, 0], [0, 1], [1, 0]])
    >>> s = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
    >>> mean_average_precision(y, s)[0]
    1.0
    """
    labels, scores = np.asarray(labels), np.asarray(scores)
    if labels.ndim != 2 or labels.shape != scores.shape:
        raise ValidationError(
            f"labels and scores must both be [num_items, num_classes]. Got {labels.shape} and {scores.shape}.")
    if not np.all(np.isfinite(scores)):
        raise ValidationError("scores must be finite. Got NaN or infinite values.")
    per_class = np.array([average_precision(labels[:, c], scores[:, c]) for c in range(labels.shape[1])])
    scored = ~np.isnan(per_class)
    mean = float(per_class[scored].mean()) if scored.any() else float("nan")
    return mean, per_class
