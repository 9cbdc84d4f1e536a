"""Evaluation of students and teachers: WER, mAP, EER and KD L1, as JSON reports.

``evaluate`` runs a whole evaluation (teachers from the store, plus the
student when a checkpoint is given); the metrics alone live in
:mod:`mt2kd.eval.metrics` and need neither a model nor a store. ``decode``
(with ``DecodeResult``) turns the ASR heads' output into token ids: batched
transducer greedy and modified beam search, CTC greedy. It loads torch, so
it resolves on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from mt2kd.eval._config import EvalConfig
from mt2kd.eval._run import Evaluation, evaluate
from mt2kd.eval.metrics import (cer, det_curve, eer, kd_l1, make_trials, mean_average_precision, read_trials,
                                wer, write_trials)

__all__ = [
    "EvalConfig", "Evaluation", "evaluate",
    "wer", "cer", "mean_average_precision", "eer", "det_curve", "kd_l1",
    "make_trials", "read_trials", "write_trials",
    "decode", "DecodeResult",
]

_LAZY = {"decode": "_decode", "DecodeResult": "_decode"}  # name -> module; these import torch


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'mt2kd.eval' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"mt2kd.eval.{_LAZY[name]}"), name)
    globals()[name] = value
    return value
