"""Presenting an evaluation: an aligned ``key : value`` table, the JSON file, and plots."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from mt2kd.eval._speaker import DetCurve

# too long for a table; they stay in the JSON
TABLE_SKIP = ("config", "per_class_ap", "student.model.student_config")


def format_table(report: dict[str, Any]) -> str:
    """Flatten the report into aligned ``dotted.key : value`` lines (lists left out).

    Examples
    --------
    >>> print(format_table({"teachers": {"beats": {"map": {"map": 0.5, "num_cuts": 3}}}}))
    teachers.beats.map.map      : 0.5000
    teachers.beats.map.num_cuts : 3
    """
    rows = [(key, _format_value(value)) for key, value in _flatten(report) if not _skipped(key)]
    width = max((len(key) for key, _ in rows), default=0)
    return "\n".join(f"{key:<{width}} : {value}" for key, value in rows)


def _skipped(key: str) -> bool:
    return any(key == prefix or key.startswith(prefix + ".") for prefix in TABLE_SKIP)


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [row for key, item in value.items() for row in _flatten(item, f"{prefix}{key}.")]
    if isinstance(value, list):
        return []
    return [(prefix[:-1], value)]


def _format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def write_json(report: dict[str, Any], path: str | Path) -> None:
    # allow_nan=False: the report must stay strict JSON (NaN was mapped to null before)
    Path(path).write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def write_plots(tagging: dict[str, Any], speaker: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """A DET curve of every model with trials, and a per-class AP chart; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    curves = {f"{name} (EER {100 * s.summary['eer']:.1f}%)": s.det for name, s in speaker.items() if s.det is not None}
    if curves:
        written.append(_plot_det(curves, out_dir / "det.png"))
    per_class = {name: s.per_class_ap for name, s in tagging.items() if s.per_class_ap is not None}
    if per_class:
        written.append(_plot_per_class_ap(per_class, out_dir / "per_class_ap.png"))
    return written


DET_LIMITS = (0.001, 0.99)  # rates shown on the DET axes; 0 and 1 are drawn at these edges
DET_TICKS = (0.001, 0.01, 0.05, 0.2, 0.5, 0.8, 0.95, 0.99)


def _probit(rates: np.ndarray) -> np.ndarray:
    # DET axes are normal deviates; rates of exactly 0 or 1 have none, so they sit on the edge
    clipped = np.clip(rates, *DET_LIMITS)
    return np.array([NormalDist().inv_cdf(float(p)) for p in clipped])


def _plot_det(curves: dict[str, DetCurve], path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, curve in curves.items():
        ax.plot(_probit(curve.false_alarm_rate), _probit(curve.miss_rate), label=name)
    ticks, labels = _probit(np.array(DET_TICKS)), [f"{100 * t:g}" for t in DET_TICKS]
    ax.set_xticks(ticks, labels)
    ax.set_yticks(ticks, labels)
    ax.set_xlim(ticks[0] - 0.1, ticks[-1] + 0.1)
    ax.set_ylim(ticks[0] - 0.1, ticks[-1] + 0.1)
    ax.set_xlabel("false alarm rate (%)")
    ax.set_ylabel("miss rate (%)")
    ax.set_title("DET curve")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_per_class_ap(per_class: dict[str, np.ndarray], path: Path) -> Path:
    import matplotlib.pyplot as plt

    scored = ~np.all([np.isnan(ap) for ap in per_class.values()], axis=0)
    classes = np.flatnonzero(scored)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.05 * len(classes) + 2), 3.5))
    width = 0.8 / len(per_class)
    for k, (name, ap) in enumerate(per_class.items()):
        ax.bar(np.arange(len(classes)) + k * width, np.nan_to_num(ap[classes]), width=width, label=name)
    ax.set_xlabel(f"class ({len(classes)} with positives)")
    ax.set_ylabel("average precision")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
