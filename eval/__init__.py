"""Evaluation of students and teachers: WER, mAP, EER and KD L1, as JSON reports.

``evaluate`` runs a whole evaluation (teachers from the store, plus the
student when a checkpoint is given); ``evaluate_student`` (with
``StudentEvalConfig``) scores a fine-tuned student per test set;
``write_json`` writes a report; the
metrics alone live in :mod:`mt2kd.eval.metrics` and need neither a model nor
a store. ``decode`` (with ``DecodeResult``) turns the ASR heads' output into
token ids: batched transducer greedy and modified beam search, CTC greedy.
Names resolve on first use, so ``mt2kd eval --help`` stays fast and torch
loads only with ``decode``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mt2kd._exports import lazy_exports

if TYPE_CHECKING:
    from mt2kd.eval._config import EvalConfig, StudentEvalConfig
    from mt2kd.eval._decode import DecodeResult, decode
    from mt2kd.eval._report import write_json
    from mt2kd.eval._run import Evaluation, evaluate
    from mt2kd.eval._student_eval import evaluate_student, summary_table
    from mt2kd.eval.metrics import (
        cer,
        det_curve,
        eer,
        kd_l1,
        make_trials,
        mean_average_precision,
        read_trials,
        wer,
        write_trials,
    )

_WHERE = {
    "EvalConfig": "_config", "Evaluation": "_run", "evaluate": "_run", "write_json": "_report",
    "decode": "_decode", "DecodeResult": "_decode",
    "StudentEvalConfig": "_config", "evaluate_student": "_student_eval", "summary_table": "_student_eval",
    **{name: "metrics" for name in ("wer", "cer", "mean_average_precision", "eer", "det_curve", "kd_l1",
                                    "make_trials", "read_trials", "write_trials")},
}

__all__ = sorted(_WHERE)
if not TYPE_CHECKING:
    __getattr__ = lazy_exports(__name__, _WHERE)
