"""Audio tagging scores: average precision per class and their mean (mAP).

The per-class AP follows the step-wise definition that scikit-learn's
``average_precision_score`` uses: precision at every distinct score, weighted
by the recall gained there, with tied scores forming one step. Classes with
no positive example have no defined AP; they are reported as NaN and left out
of the mean, which is how AudioSet evaluations usually treat them.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mt2kd.errors import ValidationError


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


def load_label_list(path: str | Path) -> dict[str, int]:
    """Map label names to class indices.

    Two formats: a plain text file with one label per line (line order gives
    the index), or AudioSet's ``class_labels_indices.csv`` (``index,mid,
    display_name``), where both the mid and the display name map to the index.

    Examples
    --------
    >>> load_label_list("class_labels_indices.csv")["Speech"]  # doctest: +SKIP
    0
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".csv":
        return _read_label_csv(path, text)
    names = [line.strip() for line in text.splitlines() if line.strip()]
    return {name: index for index, name in enumerate(names)}


def _read_label_csv(path: Path, text: str) -> dict[str, int]:
    rows = list(csv.DictReader(text.splitlines()))
    if not rows or not {"index", "mid", "display_name"} <= set(rows[0]):
        raise ValidationError(f"{path}: expected the columns index,mid,display_name. Got {list(rows[0]) if rows else []}.")
    mapping: dict[str, int] = {}
    for row in rows:
        mapping[row["mid"]] = int(row["index"])
        mapping[row["display_name"]] = int(row["index"])
    return mapping


def events_to_multi_hot(events: Sequence[str | int], num_classes: int,
                        label_index: dict[str, int] | None, cut_id: str,
                        label_file: str | Path | None = None) -> np.ndarray:
    """One cut's event labels (names or class indices) as a multi-hot vector.

    ``label_file`` (where ``label_index`` came from) is named in the error for an unknown name.
    """
    target = np.zeros(num_classes, dtype=bool)
    for event in events:
        target[_class_index(event, num_classes, label_index, cut_id, label_file)] = True
    return target


def _class_index(event: str | int, num_classes: int, label_index: dict[str, int] | None, cut_id: str,
                 label_file: str | Path | None = None) -> int:
    if isinstance(event, str) and not event.isdigit():
        if label_index is None:
            raise ValidationError(
                f"cut {cut_id!r}: event {event!r} is a name, so a label list is needed (--labels FILE). Got none.")
        if event not in label_index:
            where = f" {str(label_file)!r}" if label_file else ""
            raise ValidationError(f"cut {cut_id!r}: event {event!r} must be in the label list{where}. Got an "
                                  f"unknown name (the list has {len(set(label_index.values()))} classes).")
        index = label_index[event]
    else:
        index = int(event)
    if not 0 <= index < num_classes:
        raise ValidationError(f"cut {cut_id!r}: class index must be in [0, {num_classes}). Got {index}.")
    return index
