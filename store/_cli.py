"""``mt2kd store``: inspect, check, plot and compare teacher stores from a shell.

Every command prints aligned ``key : value`` lines for people and, with
``--json``, the same facts as one JSON document for machines. Start-up
imports the store and click only; matplotlib (``plot``) and lhotse
(``verify --cuts`` on manifests without durations) load inside the command
that needs them, and torch never loads: ``mt2kd store info`` answers fast.
"""

from __future__ import annotations

import functools
import gzip
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import numpy as np

from mt2kd.errors import MT2KDError

if TYPE_CHECKING:
    from mt2kd.store import TeacherSpec, TeacherStore

AUDIOSET_CLASSES = 527  # a clip teacher of this size emits AudioSet logits
TOP_K = 10  # logits listed by `show` and drawn by `plot`
READ_BATCH = 64  # cuts per get_many while scanning a whole store
KEY_WIDTH = 20  # column of the ':' in key : value output
PLOT_PERCENTILE = 1.0  # %, heatmap colours span the 1st to 99th percentile of the values

F = TypeVar("F", bound=Callable[..., Any])


# ---------------------------------------------------------------- plumbing


def _friendly(command: F) -> F:
    """Turn mt2kd and file-system errors into a one-line message and exit status 1, without a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (MT2KDError, OSError) as e:  # a vanished shard file or an unwritable -o path, say
            raise click.ClickException(f"{type(e).__name__}: {e}") from e

    return wrapper  # type: ignore[return-value]


def _open(path: str) -> TeacherStore:
    from mt2kd.store import TeacherStore

    return TeacherStore.open(path)


def _json_option(command: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="print the facts as JSON")(command)


def _emit_json(facts: Any) -> None:
    click.echo(json.dumps(facts, indent=2, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def kv_lines(pairs: Iterable[tuple[str, Any]], indent: int = 0) -> list[str]:
    """Aligned ``key : value`` lines, zarr ``ArrayInfo`` style."""
    pad = " " * indent
    return [f"{pad}{key:<{KEY_WIDTH - indent}}: {value}" for key, value in pairs]


def human_bytes(num_bytes: float) -> str:
    """``1536`` -> ``'1.5K'``: binary units with one decimal, like zarr's info."""
    value = float(num_bytes)
    for unit in ("", "K", "M", "G", "T"):
        if abs(value) < 1024.0 or unit == "T":
            return f"{int(value)}" if unit == "" else f"{value:.1f}{unit}"
        value /= 1024.0
    return f"{value:.1f}P"


def _scan(ts: TeacherStore, cut_ids: Sequence[str], teachers: Sequence[str] | None = None
          ) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """(cut ID, {teacher: array}) of every cut, read in batches so reads are coalesced."""
    for start in range(0, len(cut_ids), READ_BATCH):
        chunk = cut_ids[start:start + READ_BATCH]
        yield from zip(chunk, ts.get_many(chunk, teachers=teachers))


@click.group()
def store() -> None:
    """Inspect, verify, plot and compare teacher-label stores."""


# ---------------------------------------------------------------- info


def _fmt(value: Any, fmt: str = "{:,}") -> str:
    return "-" if value is None else fmt.format(value)


def _info_lines(facts: Mapping[str, Any]) -> list[str]:
    lines = kv_lines([
        ("Type", "mt2kd.TeacherStore"), ("Store", facts["url"]),
        ("Format version", _fmt(facts["format_version"], "{}")),
        ("Teachers", ", ".join(facts["teachers"])), ("Cuts", _fmt(facts["num_cuts"])),
        ("Committed shards", _fmt(facts["num_shards"])), ("Failures", _fmt(facts["num_failures"])),
        ("Audio hours", _fmt(facts["audio_hours"], "{:,.3f}")),
        ("Bytes on disk", _bytes_fmt(facts["bytes_on_disk"])),
        ("Teacher data", _bytes_fmt(facts["teacher_bytes_on_disk"])),
        ("Storage ratio", _fmt(facts["storage_ratio"], "{:.2f}") + " (teacher data / raw float32)"),
        *((f"Attr {key}", json.dumps(value)) for key, value in sorted(facts.get("attrs", {}).items())),
    ])
    for name, t in facts["teachers"].items():
        shape = f"[frames, {t['dim']}] at {t['frame_rate']:g} Hz" if t["kind"] == "frames" else f"[{t['dim']}] per cut"
        lines += ["", *kv_lines([("Teacher", name)])]
        lines += kv_lines([
            ("Kind", f"{t['kind']} {shape}"), ("Dtype", t["dtype"]),
            ("Codec", f"{t['codec']} (level {t['codec_level']})"), ("Fingerprint", t["fingerprint"] or "-"),
            ("Config", json.dumps(t.get("config", {}), sort_keys=True)),
            ("Cuts", _fmt(t["num_cuts"])),
            *([("Frames", _fmt(t["num_frames"])), ("Audio hours", _fmt(t["audio_hours"], "{:,.3f}"))]
              if t["kind"] == "frames" else []),
            ("Bytes on disk", _bytes_fmt(t["bytes_on_disk"])),
            ("Storage ratio", _fmt(t["storage_ratio"], "{:.2f}")),
        ], indent=2)
    return lines


def _bytes_fmt(num_bytes: int | None) -> str:
    return "-" if num_bytes is None else f"{num_bytes:,} ({human_bytes(num_bytes)})"


@store.command()
@click.argument("path")
@_json_option
@_friendly
def info(path: str, as_json: bool) -> None:
    """Teachers, cuts, shards, frames, hours and bytes of a store.

    Example: mt2kd store info runs/librispeech.zarr --json
    """
    ts = _open(path)
    facts = ts.info()
    for name, spec in ts.specs.items():  # the teacher options (whisper mode, layer) belong in the summary
        facts["teachers"][name].setdefault("config", spec.config)
    if as_json:
        _emit_json(facts)
    else:
        click.echo("\n".join(_info_lines(facts)))


# ---------------------------------------------------------------- ls, show


@store.command("ls")
@click.argument("path")
@click.option("--limit", type=int, default=20, show_default=True, help="cuts to list (0: all)")
@_json_option
@_friendly
def ls_(path: str, limit: int, as_json: bool) -> None:
    """List cut IDs with each teacher's array shape."""
    ts = _open(path)
    all_ids = list(ts.cut_ids())
    shown = all_ids if limit <= 0 else all_ids[:limit]
    cuts: list[dict[str, Any]] = [{"cut_id": c, "shapes": {t: list(a.shape) for t, a in arrays.items()}}
                                  for c, arrays in _scan(ts, shown)]
    if as_json:
        _emit_json({"store": path, "num_cuts": len(all_ids), "cuts": cuts})
        return
    rows = [[c["cut_id"], *(f"{t}={_shape(s)}" for t, s in c["shapes"].items())] for c in cuts]
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(max(map(len, rows), default=0))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    if len(shown) < len(all_ids):
        click.echo(f"... {len(all_ids) - len(shown)} more of {len(all_ids)} cuts (--limit 0 lists all)")


def _shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(n) for n in shape) + "]"


def summarize(array: np.ndarray, spec: TeacherSpec | None) -> dict[str, Any]:
    """Shape and value statistics of one teacher output, plus top logits or a norm for clip outputs."""
    values = np.asarray(array, dtype=np.float64)
    finite = values[np.isfinite(values)]
    facts: dict[str, Any] = {"shape": list(array.shape), "dtype": str(array.dtype)}
    if spec is not None and spec.kind == "frames":
        facts["num_frames"] = int(array.shape[0])
        facts["seconds"] = array.shape[0] / spec.frame_rate
    for name, fn in (("min", np.min), ("max", np.max), ("mean", np.mean), ("std", np.std)):
        facts[name] = float(fn(finite)) if finite.size else math.nan
    facts["num_nonfinite"] = int(values.size - finite.size)
    if values.ndim == 1:
        facts["norm"] = float(np.linalg.norm(values))
        if values.shape[0] == AUDIOSET_CLASSES:
            top = np.argsort(-values, kind="stable")[:TOP_K]
            facts["top_logits"] = [{"index": int(i), "logit": float(values[i])} for i in top]
    return facts


@store.command()
@click.argument("path")
@click.argument("cut_id")
@_json_option
@_friendly
def show(path: str, cut_id: str, as_json: bool) -> None:
    """Shapes and value summary of every teacher output of CUT_ID."""
    ts = _open(path)
    specs = ts.specs
    teachers = {t: summarize(a, specs.get(t)) for t, a in ts.get(cut_id).items()}
    if as_json:
        _emit_json({"store": path, "cut_id": cut_id, "teachers": teachers})
        return
    lines = kv_lines([("Cut", cut_id), ("Store", path)])
    for name, facts in teachers.items():
        lines += ["", *kv_lines([("Teacher", name)])]
        lines += kv_lines(_show_pairs(facts), indent=2)
    click.echo("\n".join(lines))


def _show_pairs(facts: Mapping[str, Any]) -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = [("Shape", _shape(facts["shape"])), ("Dtype", facts["dtype"])]
    if "num_frames" in facts:
        pairs.append(("Duration", f"{facts['seconds']:.2f} s ({facts['num_frames']} frames)"))
    pairs += [(k.capitalize(), f"{facts[k]:.6g}") for k in ("min", "max", "mean", "std")]
    if facts["num_nonfinite"]:
        pairs.append(("Non-finite values", facts["num_nonfinite"]))
    if "norm" in facts:
        pairs.append(("L2 norm", f"{facts['norm']:.6g}"))
    for rank, top in enumerate(facts.get("top_logits", []), start=1):
        pairs.append((f"Logit #{rank}", f"{top['logit']:.4f}  (class {top['index']})"))
    return pairs


# ---------------------------------------------------------------- verify


def load_durations(manifest: str) -> dict[str, float]:
    """Cut ID -> duration (s) of a lhotse CutSet manifest (``.jsonl`` or ``.jsonl.gz``).

    Lines are parsed as plain JSON, which keeps torch (imported by lhotse) out
    of ``verify``; a manifest with cuts that carry no ``duration`` field (mixed
    cuts) is handed to lhotse instead.
    """
    durations: dict[str, float] = {}
    opener = gzip.open if manifest.endswith(".gz") else open
    with opener(manifest, "rt", encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            cut = json.loads(line)
            if "duration" not in cut:
                return _load_durations_with_lhotse(manifest)
            durations[cut["id"]] = float(cut["duration"])
    return durations


def _load_durations_with_lhotse(manifest: str) -> dict[str, float]:
    from lhotse import CutSet

    return {cut.id: float(cut.duration) for cut in CutSet.from_jsonl_lazy(manifest)}


@store.command()
@click.argument("path")
@click.option("--cuts", "manifest", type=click.Path(exists=True, dir_okay=False),
              help="lhotse CutSet (.jsonl/.jsonl.gz): every cut must be present with matching frame counts")
@_json_option
@_friendly
def verify(path: str, manifest: str | None, as_json: bool) -> None:
    """Check a store: exit 0 when clean, 1 listing the problems.

    Problems are the store's own findings (NaN/Inf values, uncommitted
    leftovers, unreadable shards) plus, with --cuts, cuts of the manifest that
    are missing and frame counts that disagree with a cut's duration.
    """
    try:
        durations = load_durations(manifest) if manifest else None
    except (OSError, ValueError, KeyError) as e:
        raise click.ClickException(f"--cuts must be a lhotse CutSet .jsonl(.gz). Got {manifest!r}: {e}") from e
    ts = _open(path)
    problems = [str(p) for p in ts.verify(durations)]
    facts = {"store": path, "manifest": manifest, "num_cuts": len(ts), "ok": not problems,
             "num_problems": len(problems), "problems": problems}
    if as_json:
        _emit_json(facts)
    else:
        lines = kv_lines([("Store", path), ("Manifest", manifest or "-"), ("Cuts", f"{len(ts):,}"),
                          ("Problems", len(problems))])
        lines += [f"  - {p}" for p in problems]
        lines.append("OK" if not problems else "FAILED")
        click.echo("\n".join(lines))
    if problems:
        raise SystemExit(1)


# ---------------------------------------------------------------- plot


@store.command()
@click.argument("path")
@click.argument("cut_id")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="PNG file to write")
@_friendly
def plot(path: str, cut_id: str, output: str) -> None:
    """Plot CUT_ID to a PNG: frames heatmap, top logits, embedding."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on cluster nodes
    import matplotlib.pyplot as plt

    ts = _open(path)
    specs = ts.specs
    arrays = ts.get(cut_id)
    fig, axes = plt.subplots(len(arrays), 1, figsize=(10, 3.2 * len(arrays)), squeeze=False)
    for ax, (name, array) in zip(axes[:, 0], arrays.items()):
        _draw(ax, name, np.asarray(array, dtype=np.float32), specs.get(name))
    fig.suptitle(cut_id)
    fig.tight_layout()
    fig.savefig(output, dpi=100)
    plt.close(fig)
    click.echo(f"wrote {output}")


def _draw(ax: Any, name: str, array: np.ndarray, spec: TeacherSpec | None) -> None:
    if array.ndim == 2:
        rate = spec.frame_rate if spec is not None and spec.frame_rate else 1.0
        # percentile limits: a few large-magnitude dimensions would otherwise wash out the rest
        low, high = np.nanpercentile(array, [PLOT_PERCENTILE, 100 - PLOT_PERCENTILE])
        image = ax.imshow(array.T, aspect="auto", origin="lower", interpolation="nearest", vmin=low, vmax=high,
                          extent=(0.0, array.shape[0] / rate, 0, array.shape[1]), cmap="viridis")
        ax.figure.colorbar(image, ax=ax)
        ax.set(title=f"{name}: {array.shape[0]} frames x {array.shape[1]}", xlabel="time (s)", ylabel="dim")
    elif array.shape[0] == AUDIOSET_CLASSES:
        top = np.argsort(-array, kind="stable")[:TOP_K]
        bars = ax.bar(range(len(top)), array[top])
        ax.bar_label(bars, [f"p={1 / (1 + np.exp(-v)):.2f}" for v in array[top]], fontsize=8)  # sigmoid
        ax.set_xticks(range(len(top)), [str(i) for i in top])
        ax.set(title=f"{name}: top {len(top)} logits", xlabel="class index", ylabel="logit")
    else:
        ax.plot(array, linewidth=0.8)
        ax.set(title=f"{name}: {array.shape[0]}-D, L2 norm {np.linalg.norm(array):.3g}", xlabel="dim", ylabel="value")


# ---------------------------------------------------------------- diff


class _TeacherDiff:
    """Running max/mean absolute difference and mean row cosine of one teacher."""

    def __init__(self) -> None:
        self.max_abs = 0.0
        self.sum_abs = 0.0
        self.num_values = 0
        self.sum_cos = 0.0
        self.num_rows = 0
        self.num_cuts = 0
        self.shape_mismatches: list[str] = []

    def add(self, cut_id: str, a: np.ndarray, b: np.ndarray) -> None:
        if a.shape != b.shape:
            self.shape_mismatches.append(f"{cut_id}: {_shape(a.shape)} vs {_shape(b.shape)}")
            return
        a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
        abs_diff = np.abs(a64 - b64)
        self.num_cuts += 1
        if abs_diff.size:
            self.max_abs = max(self.max_abs, float(abs_diff.max()))
        self.sum_abs += float(abs_diff.sum())
        self.num_values += abs_diff.size
        rows_a, rows_b = a64.reshape(-1, a64.shape[-1]), b64.reshape(-1, b64.shape[-1])
        self.sum_cos += float(row_cosines(rows_a, rows_b).sum())
        self.num_rows += rows_a.shape[0]

    def facts(self) -> dict[str, Any]:
        return {"num_cuts": self.num_cuts, "max_abs_diff": self.max_abs,
                "mean_abs_diff": self.sum_abs / self.num_values if self.num_values else 0.0,
                "mean_cosine": self.sum_cos / self.num_rows if self.num_rows else math.nan,
                "shape_mismatches": self.shape_mismatches}


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row pair; two all-zero rows count as identical (1.0)."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.einsum("ij,ij->i", a, b)
    both_zero = (np.linalg.norm(a, axis=1) == 0) & (np.linalg.norm(b, axis=1) == 0)
    return np.where(both_zero, 1.0, dots / np.where(norms > 0, norms, 1.0))


def diff_stores(a: TeacherStore, b: TeacherStore) -> dict[str, Any]:
    """Compare two stores over the cuts and teachers they share."""
    ids_a, ids_b = list(a.cut_ids()), set(b.cut_ids())
    shared = [c for c in ids_a if c in ids_b]
    teachers = [t for t in a.specs if t in b.specs]
    diffs = {t: _TeacherDiff() for t in teachers}
    for (cut_id, got_a), (_, got_b) in zip(_scan(a, shared, teachers), _scan(b, shared, teachers)):
        for t in teachers:
            if t in got_a and t in got_b:
                diffs[t].add(cut_id, got_a[t], got_b[t])
            elif t in got_a or t in got_b:  # a teacher may be absent for a cut (a recorded failure)
                diffs[t].shape_mismatches.append(f"{cut_id}: present only in {'A' if t in got_a else 'B'}")
    return {"num_shared_cuts": len(shared), "num_only_a": len(ids_a) - len(shared),
            "num_only_b": len(ids_b) - len(shared),
            "teachers_only_a": sorted(set(a.specs) - set(teachers)),
            "teachers_only_b": sorted(set(b.specs) - set(teachers)),
            "teachers": {t: d.facts() for t, d in diffs.items()}}


@store.command()
@click.argument("path_a")
@click.argument("path_b")
@click.option("--atol", type=float, default=None,
              help="exit 1 if any shared value differs by more than this, or a shape differs")
@_json_option
@_friendly
def diff(path_a: str, path_b: str, atol: float | None, as_json: bool) -> None:
    """Compare the teacher outputs of two stores over their shared cuts.

    Exit status is 0 whatever the differences, unless --atol is given: then 1
    when a shared cut's value differs by more than ATOL or its shape differs.
    Cuts or teachers present on one side only are reported, never fatal.
    """
    facts = {"store_a": path_a, "store_b": path_b, **diff_stores(_open(path_a), _open(path_b))}
    if as_json:
        _emit_json(facts)
    else:
        click.echo("\n".join(_diff_lines(facts)))
    if atol is not None and any(d["max_abs_diff"] > atol or d["shape_mismatches"]
                                for d in facts["teachers"].values()):
        raise SystemExit(1)


def _diff_lines(facts: Mapping[str, Any]) -> list[str]:
    lines = kv_lines([("Store A", facts["store_a"]), ("Store B", facts["store_b"]),
                      ("Shared cuts", f"{facts['num_shared_cuts']:,}"), ("Only in A", f"{facts['num_only_a']:,}"),
                      ("Only in B", f"{facts['num_only_b']:,}")])
    for side in ("a", "b"):
        if facts[f"teachers_only_{side}"]:
            lines += kv_lines([(f"Teachers only in {side.upper()}", ", ".join(facts[f"teachers_only_{side}"]))])
    for name, d in facts["teachers"].items():
        lines += ["", *kv_lines([("Teacher", name)])]
        lines += kv_lines([("Cuts compared", f"{d['num_cuts']:,}"), ("Max abs diff", f"{d['max_abs_diff']:.6g}"),
                           ("Mean abs diff", f"{d['mean_abs_diff']:.6g}"), ("Mean cosine", f"{d['mean_cosine']:.6f}"),
                           ("Shape mismatches", len(d["shape_mismatches"]))], indent=2)
        lines += [f"    - {m}" for m in d["shape_mismatches"][:TOP_K]]
    return lines
