"""Evaluation of students and teachers: WER, mAP, EER and KD L1, as JSON reports."""

from mt2kd.eval.metrics import (cer, det_curve, eer, kd_l1, make_trials, mean_average_precision, read_trials,
                                wer, write_trials)

__all__ = [
    "wer", "cer", "mean_average_precision", "eer", "det_curve", "kd_l1",
    "make_trials", "read_trials", "write_trials",
]
