"""The short report that ends ``mt2kd run`` and ``mt2kd demo``."""

from __future__ import annotations

from typing import Any

from mt2kd.eval._config import EvalConfig
from mt2kd.workflows._stages import summary_lines

NOTE = ("no cut has event labels: the tagging teacher's sigmoid outputs above the threshold serve as labels, so the "
        "teacher's own mAP is 1.0 by construction")


def report(labels: dict[str, Any]) -> dict[str, Any]:
    """An evaluation report of the teachers only (no student), as ``mt2kd.eval.evaluate`` writes it."""
    return {"labels": labels, "student": None, "teachers": {
        "beats": {"map": {"num_cuts": 24, "num_cuts_missing": 0, "map": 1.0, "num_classes_scored": 3}},
        "ecapa": {"eer": {"num_target_trials": 60, "num_nontarget_trials": 216, "eer": 0.12}}}}


def test_the_summary_says_the_tagging_labels_are_the_teacher_s_own_pseudo_labels() -> None:
    cfg = EvalConfig(cuts=("speech.jsonl.gz",), stores=("store.zarr",))
    pseudo = {"source": "teacher_pseudo_labels", "threshold": 0.5, "note": NOTE, "num_cuts_labelled": 24}
    lines = summary_lines({"verify": [], "eval": report(pseudo)}, cfg)
    at = next(i for i, line in enumerate(lines) if line.startswith("mAP    : "))
    assert "teacher beats 1.000" in lines[at]
    assert lines[at + 1] == f"         labels: {NOTE}"  # right under the mAP it explains
    events = summary_lines({"eval": report({"source": "events", "num_cuts_labelled": 20})}, cfg)
    assert not any("labels:" in line for line in events)  # real labels: nothing to explain
