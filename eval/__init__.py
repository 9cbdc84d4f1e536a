"""Evaluation of students and teachers: WER, mAP, EER and KD L1, as JSON reports.

``evaluate`` runs a whole evaluation (teachers from the store, plus the
student when a checkpoint is given); the metrics alone live in
:mod:`mt2kd.eval.metrics` and need neither a model nor a store.
"""

from mt2kd.eval._config import EvalConfig
from mt2kd.eval._run import Evaluation, evaluate
from mt2kd.eval.metrics import (cer, det_curve, eer, kd_l1, make_trials, mean_average_precision, read_trials,
                                wer, write_trials)

__all__ = [
    "EvalConfig", "Evaluation", "evaluate",
    "wer", "cer", "mean_average_precision", "eer", "det_curve", "kd_l1",
    "make_trials", "read_trials", "write_trials",
]
