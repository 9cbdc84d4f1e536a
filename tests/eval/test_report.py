"""Report presentation: strict JSON, the aligned table, the plot files."""

from __future__ import annotations

import json

import numpy as np

from mt2kd.eval._report import format_table, write_json, write_plots
from mt2kd.eval._scoring import Scores, json_ready
from mt2kd.eval._speaker import det_curve


def test_json_ready_maps_nan_and_numpy():
    value = json_ready({"ap": np.array([np.nan, 0.5]), "n": np.int64(3), "ok": np.bool_(True), "x": float("inf")})
    assert value == {"ap": [None, 0.5], "n": 3, "ok": True, "x": None}


def test_write_json_is_strict(tmp_path):
    path = tmp_path / "r.json"
    write_json(json_ready({"map": float("nan"), "counts": {"num_cuts": 2}}), path)
    assert json.loads(path.read_text()) == {"map": None, "counts": {"num_cuts": 2}}


def test_table_aligns_and_leaves_out_config_and_lists():
    report = {"config": {"seed": 0}, "counts": {"num_cuts": 12}, "student": {"eer": {"eer": 0.25, "reason": None}},
              "per_class_ap": {"student": [0.1, 0.2]}}
    lines = format_table(report).splitlines()
    # keys padded to the longest one ("student.eer.reason", 18 characters); None shown as "-"
    assert lines == ["counts.num_cuts    : 12", "student.eer.eer    : 0.2500", "student.eer.reason : -"]


def test_plots_are_png_files(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.random(40) < 0.5
    scores = rng.normal(size=40) + labels
    speaker = {"ecapa": Scores({"eer": 0.2}, det=det_curve(scores, labels))}
    tagging = {"beats": Scores({}, per_class_ap=np.array([0.5, np.nan, 1.0]))}
    written = write_plots(tagging, speaker, tmp_path / "plots")
    assert sorted(p.name for p in written) == ["det.png", "per_class_ap.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in written)
