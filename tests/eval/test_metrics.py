"""Metrics against hand-computed values and scikit-learn on the same inputs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import brentq
from sklearn.metrics import average_precision_score, roc_curve

from mt2kd.errors import ValidationError
from mt2kd.eval._kd import kd_l1, kd_l1_parts
from mt2kd.eval._speaker import cosine_scores, det_curve, eer
from mt2kd.eval._tagging import average_precision, mean_average_precision

# ---------------------------------------------------------------- average precision

def test_map_hand_computed():
    labels = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
    scores = np.array([[0.9, 0.1, 0.5], [0.8, 0.4, 0.5], [0.7, 0.3, 0.5], [0.6, 0.2, 0.5]])
    # class 0: positives ranked 1st and 3rd -> precisions 1/1 and 2/3 -> AP 5/6
    # class 1: its one positive ranked first -> AP 1
    # class 2: no positives -> NaN, not counted in the mean
    mean, per_class = mean_average_precision(labels, scores)
    assert per_class[0] == pytest.approx(5 / 6)
    assert per_class[1] == pytest.approx(1.0)
    assert np.isnan(per_class[2])
    assert mean == pytest.approx((5 / 6 + 1) / 2)


def test_ap_ties_form_one_step():
    # all four tied: one threshold, precision 2/4 at recall 1
    assert average_precision(np.array([1, 0, 1, 0]), np.zeros(4)) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(5))
def test_ap_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    num_items, num_classes = 60, 7
    labels = rng.random((num_items, num_classes)) < 0.3
    labels[0] = True  # every class has a positive, so sklearn never warns
    # scores rounded to one decimal: many ties within each class
    scores = np.round(rng.random((num_items, num_classes)), 1)
    _, per_class = mean_average_precision(labels, scores)
    for c in range(num_classes):
        assert per_class[c] == pytest.approx(average_precision_score(labels[:, c], scores[:, c]), abs=1e-12)


def test_map_shape_mismatch_is_an_error():
    with pytest.raises(ValidationError, match="num_items, num_classes"):
        mean_average_precision(np.zeros((3, 2)), np.zeros((3, 3)))


# ---------------------------------------------------------------- EER / DET

def test_eer_hand_computed():
    # threshold 0.9: miss 1/2, fa 0/2; threshold 0.8: miss 1/2, fa 1/2 -> rates equal at 0.8
    rate, threshold = eer(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0]))
    assert rate == pytest.approx(0.5)
    assert threshold == pytest.approx(0.8)


def test_eer_interpolates_between_points():
    # targets 0.9, 0.6; non-targets 0.8, 0.5, 0.4, 0.3
    # at 0.8: miss 1/2, fa 1/4 (gap +1/4); at 0.6: miss 0, fa 1/4 (gap -1/4)
    # the crossing lies halfway along that segment: fa 1/4, miss 1/4, threshold 0.7
    scores = np.array([0.9, 0.8, 0.6, 0.5, 0.4, 0.3])
    labels = np.array([1, 0, 1, 0, 0, 0])
    rate, threshold = eer(scores, labels)
    assert rate == pytest.approx(0.25)
    assert threshold == pytest.approx(0.7)


def test_eer_separable_is_zero():
    rate, threshold = eer(np.array([0.9, 0.8, 0.2, 0.1]), np.array([1, 1, 0, 0]))
    assert rate == 0.0
    assert 0.2 < threshold <= 0.8


def _sklearn_eer(scores, labels):
    """EER where 1 - tpr(fpr) crosses the diagonal, ROC linearly interpolated (the usual recipe)."""
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return brentq(lambda x: 1.0 - x - np.interp(x, fpr, tpr), 0.0, 1.0, xtol=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_eer_matches_sklearn_roc(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(300) < 0.3
    scores = rng.normal(size=300) + 1.2 * labels  # overlapping classes, no ties
    rate, _ = eer(scores, labels)
    assert rate == pytest.approx(_sklearn_eer(scores, labels), abs=1e-6)


def test_det_curve_matches_sklearn_roc():
    rng = np.random.default_rng(7)
    labels = rng.random(50) < 0.5
    scores = np.round(rng.random(50), 1)  # ties
    curve = det_curve(scores, labels)
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(curve.false_alarm_rate, fpr)
    np.testing.assert_allclose(curve.miss_rate, 1 - tpr)
    np.testing.assert_allclose(curve.thresholds[1:], thresholds[1:])


def test_eer_needs_both_kinds_of_trials():
    with pytest.raises(ValidationError, match="both target and non-target"):
        eer(np.array([0.1, 0.2]), np.array([1, 1]))


def test_cosine_scores():
    emb = {"a": np.array([3.0, 0.0]), "b": np.array([0.0, 2.0]), "c": np.array([-1.0, 0.0])}
    scores, labels = cosine_scores(emb, [("a", "b", False), ("a", "c", True)])
    np.testing.assert_allclose(scores, [0.0, -1.0])
    assert labels.tolist() == [False, True]


def test_cosine_rejects_zero_embedding():
    with pytest.raises(ValidationError, match="cut 'z'"):
        cosine_scores({"z": np.zeros(3)}, [])


# ---------------------------------------------------------------- KD L1

def test_kd_l1_truncates_and_masks():
    student = np.zeros((1, 4, 2))
    student[0, 3] = 100.0  # beyond the teacher's length: must be ignored
    teacher = np.ones((1, 3, 2))
    teacher[0, 2] = 5.0  # masked frame: must be ignored
    mask = np.array([[True, True, False, True]])
    # valid aligned frames 0 and 1, each |0 - 1| in both dims -> mean 1
    assert kd_l1(student, teacher, mask) == pytest.approx(1.0)
    assert kd_l1_parts(student, teacher, mask) == (4.0, 4)


def test_kd_l1_leaves_out_padded_teacher_frames():
    student = np.zeros((2, 4, 1))
    teacher = np.ones((2, 4, 1))
    teacher[1, 2:] = 0.0  # cut 1's teacher has 2 frames, zero-padded to 4
    teacher_mask = np.array([[True] * 4, [True, True, False, False]])
    assert kd_l1(student, teacher, teacher_mask=teacher_mask) == pytest.approx(1.0)
    assert kd_l1_parts(student, teacher, teacher_mask=teacher_mask) == (6.0, 6)
    with pytest.raises(ValidationError, match="teacher_mask must have the teacher's shape"):
        kd_l1(student, teacher, teacher_mask=teacher_mask[:, :3])


def test_kd_l1_equals_mean_abs_on_equal_lengths():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 6)), rng.normal(size=(5, 6))
    assert kd_l1(a, b) == pytest.approx(np.abs(a - b).mean())


def test_kd_l1_dim_mismatch_is_an_error():
    with pytest.raises(ValidationError, match="agree in batch and dim"):
        kd_l1(np.zeros((3, 2)), np.zeros((3, 4)))
