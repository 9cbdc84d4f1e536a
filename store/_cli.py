"""``mt2kd store``: inspect, check, plot and compare teacher stores from a shell.

Every command prints aligned ``key : value`` lines for people and, with
``--json``, the same facts as one JSON document for machines. Start-up
imports the store and click only; matplotlib (``plot``) and lhotse
(``verify --cuts`` on manifests without durations) load inside the command
that needs them, and torch never loads: ``mt2kd store info`` answers fast.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click
import numpy as np

from mt2kd.cli import one_line_errors
from mt2kd.cuts import load_durations
from mt2kd.store._cli_text import (
    AUDIOSET_CLASSES,
    TOP_K,
    diff_lines,
    diff_stores,
    failed_cut_text,
    failure_lines,
    has_random_teachers,
    info_facts,
    info_text,
    kv_lines,
    random_lines,
    read_cuts,
    shape_text,
    show_pairs,
    summarize,
)
from mt2kd.store._quantizer import codes_teachers

if TYPE_CHECKING:
    from mt2kd.store import TeacherSpec, TeacherStore

__all__ = ["store"]
PLOT_PERCENTILE = 1.0  # %, heatmap colours span the 1st to 99th percentile of the values

F = TypeVar("F", bound=Callable[..., Any])


# ---------------------------------------------------------------- plumbing


def _open(path: str) -> TeacherStore:
    from mt2kd.store import TeacherStore

    return TeacherStore.open(path)


def _refuse_failed(ts: TeacherStore, cut_id: str) -> None:
    """A one-line error giving the reason when ``cut_id`` is not stored because its extraction failed."""
    if cut_id not in ts:
        text = failed_cut_text(cut_id, ts.failures())
        if text is not None:
            raise click.ClickException(f"{text} Store: {ts.url}")


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


@click.group()
def store() -> None:
    """Inspect, verify, plot and compare teacher-label stores."""


# ---------------------------------------------------------------- info


@store.command()
@click.argument("path")
@_json_option
@one_line_errors
def info(path: str, as_json: bool) -> None:
    """Teachers, cuts, shards, frames, hours and bytes of a store.

    Example: mt2kd store info runs/librispeech.zarr --json
    """
    ts = _open(path)
    if as_json:
        _emit_json(info_facts(ts))
    else:
        click.echo("\n".join(info_text(ts, path)))


# ---------------------------------------------------------------- ls, show


@store.command("ls")
@click.argument("path")
@click.option("--limit", type=int, default=20, show_default=True, help="cuts to list (0: all)")
@_json_option
@one_line_errors
def ls_(path: str, limit: int, as_json: bool) -> None:
    """List cut IDs with each teacher's array shape (from the index: no array data is read)."""
    ts = _open(path)
    all_ids = ts.cut_ids()
    shown = all_ids if limit <= 0 else all_ids[:limit]
    cuts: list[dict[str, Any]] = [{"cut_id": c, "shapes": {t: list(s) for t, s in ts.shapes(c).items()}}
                                  for c in shown]
    if as_json:
        _emit_json({"store": path, "random_teachers": has_random_teachers(ts), "num_cuts": len(all_ids),
                    "cuts": cuts})
        return
    for line in random_lines(ts, path):
        click.echo(line)
    rows = [[c["cut_id"], *(f"{t}={shape_text(s)}" for t, s in c["shapes"].items())] for c in cuts]
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(max(map(len, rows), default=0))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    if len(shown) < len(all_ids):
        click.echo(f"... {len(all_ids) - len(shown)} more of {len(all_ids)} cuts (--limit 0 lists all)")


@store.command()
@click.argument("path")
@click.argument("cut_id")
@_json_option
@one_line_errors
def show(path: str, cut_id: str, as_json: bool) -> None:
    """Shapes and value summary of every teacher output of CUT_ID."""
    ts = _open(path)
    specs = ts.specs
    _refuse_failed(ts, cut_id)
    arrays = read_cuts(ts, [cut_id])[0]
    teachers = {t: summarize(a, specs.get(t)) for t, a in arrays.items()}
    for name in codes_teachers(ts):  # MVQ codes: the quantiser, the decoded frames and the reconstruction error
        if name in arrays:
            teachers[name]["codes"] = codes_facts(ts, name, cut_id, arrays[name])
    failed = [f for f in ts.failures() if f["cut_id"] == cut_id]  # teachers without an output of this cut
    if as_json:
        _emit_json({"store": path, "random_teachers": has_random_teachers(ts), "cut_id": cut_id,
                    "teachers": teachers, "failures": failed})
        return
    lines = [*random_lines(ts, path), *kv_lines([("Cut", cut_id), ("Store", path)])]
    lines += kv_lines((f"Failed {f['teacher']}", f"{f['reason']} (shard {f['shard']})") for f in failed)
    for name, facts in teachers.items():
        lines += ["", *kv_lines([("Teacher", name)])]
        lines += kv_lines(show_pairs(facts) + (codes_pairs(facts["codes"]) if "codes" in facts else []), indent=2)
    click.echo("\n".join(lines))


# ---------------------------------------------------------------- verify


@store.command()
@click.argument("path")
@click.option("--cuts", "manifest", type=click.Path(exists=True, dir_okay=False),
              help="lhotse CutSet (.jsonl/.jsonl.gz): every cut must be present with matching frame counts")
@_json_option
@one_line_errors
def verify(path: str, manifest: str | None, as_json: bool) -> None:
    """Check a store: exit 0 when clean, 1 listing the problems.

    Problems are the store's own findings (NaN/Inf values, uncommitted
    leftovers, unreadable shards, shards of the extraction plan not yet
    committed: an interrupted run) plus, with --cuts, cuts of the manifest that
    are missing and frame counts that disagree with a cut's duration. Cuts
    the extraction recorded as failed (with their reason) are accounted for:
    they are listed as failures, not problems.
    """
    try:
        durations = load_durations(manifest) if manifest else None
    except (OSError, ValueError, KeyError) as e:
        raise click.ClickException(f"--cuts must be a lhotse CutSet .jsonl(.gz). Got {manifest!r}: {e}") from e
    ts = _open(path)
    problems = ts.verify(durations, complete=True)
    failures = ts.failures()
    facts = {"store": path, "random_teachers": has_random_teachers(ts), "manifest": manifest, "num_cuts": len(ts),
             "num_manifest_cuts": None if durations is None else len(durations), "ok": not problems,
             "num_failures": len(failures), "failures": failures,
             "num_problems": len(problems), "problems": [p.to_dict() for p in problems]}
    if as_json:
        _emit_json(facts)
    else:
        lines = random_lines(ts, path)
        lines += kv_lines([("Store", path), ("Cuts in store", f"{len(ts):,}"),
                           ("Manifest", "-" if durations is None else f"{manifest} ({len(durations):,} cuts)"),
                           ("Recorded failures", f"{len(failures):,}")])
        lines += failure_lines(failures)
        lines += kv_lines([("Problems", len(problems))])
        lines += [f"  - {p}" for p in problems]
        lines.append("OK" if not problems else "FAILED")
        click.echo("\n".join(lines))
    if problems:
        raise SystemExit(1)


# ---------------------------------------------------------------- export-text


@store.command("export-text")
@click.argument("path")
@click.option("--cuts", "manifest", required=True, type=click.Path(exists=True, dir_okay=False),
              help="lhotse CutSet (.jsonl/.jsonl.gz) the store was extracted from")
@click.option("--out", required=True, help="CutSet to write (.jsonl.gz): the cuts with a text, as supervisions")
@click.option("--teacher", default=None, help="text teacher to export [default: the store's only one]")
@one_line_errors
def export_text(path: str, manifest: str, out: str, teacher: str | None) -> None:
    """Write the cuts of --cuts with a text teacher's transcript as their one supervision (stage-2 ASR)."""
    from mt2kd.store._export import export_text as run_export
    from mt2kd.store._export import text_teacher

    ts = _open(path)
    summary = run_export(ts, text_teacher(ts, teacher), manifest, out)
    lines = random_lines(ts, path)
    lines += kv_lines([("Teacher", summary.teacher), ("Written", f"{summary.num_written:,} cuts to {out}"),
                       ("Without text", f"{summary.num_without_text:,} cuts (failed or not in the store)")])
    click.echo("\n".join(lines))


# ---------------------------------------------------------------- plot


@store.command()
@click.argument("path")
@click.argument("cut_id")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="PNG file to write")
@one_line_errors
def plot(path: str, cut_id: str, output: str) -> None:
    """Plot CUT_ID to a PNG: frames heatmap, top logits, embedding."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on cluster nodes
    import matplotlib.pyplot as plt

    ts = _open(path)
    specs = ts.specs
    _refuse_failed(ts, cut_id)
    arrays = read_cuts(ts, [cut_id])[0]
    labels = {name: codes_label(ts, name, cut_id, arrays[name]) for name in codes_teachers(ts) if name in arrays}
    arrays = decoded_arrays(ts, arrays)  # codes are drawn as the frames they decode to
    fig, axes = plt.subplots(len(arrays), 1, figsize=(10, 3.2 * len(arrays)), squeeze=False)
    for ax, (name, array) in zip(axes[:, 0], arrays.items()):
        _draw(ax, labels.get(name, name), np.asarray(array, dtype=np.float32), specs.get(name))
    fig.suptitle(cut_id)
    fig.tight_layout()
    fig.savefig(output, dpi=100)
    plt.close(fig)
    for line in random_lines(ts, path):
        click.echo(line)
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


@store.command()
@click.argument("path_a")
@click.argument("path_b")
@click.option("--atol", type=float, default=None,
              help="exit 1 if any shared value differs by more than this, or a shape differs")
@_json_option
@one_line_errors
def diff(path_a: str, path_b: str, atol: float | None, as_json: bool) -> None:
    """Compare the teacher outputs of two stores over their shared cuts.

    Exit status is 0 whatever the differences, unless --atol is given: then 1
    when a shared cut's value differs by more than ATOL or its shape differs.
    Cuts or teachers present on one side only are reported, never fatal.
    """
    store_a, store_b = _open(path_a), _open(path_b)
    facts = {"store_a": path_a, "store_b": path_b, "random_teachers_a": has_random_teachers(store_a),
             "random_teachers_b": has_random_teachers(store_b), **diff_stores(store_a, store_b)}
    if as_json:
        _emit_json(facts)
    else:
        click.echo("\n".join([*random_lines(store_a, path_a), *random_lines(store_b, path_b), *diff_lines(facts)]))
    if atol is not None and any(d["max_abs_diff"] > atol or d["shape_mismatches"]
                                for d in facts["teachers"].values()):
        raise SystemExit(1)


from mt2kd.store._cli_quantize import (  # noqa: E402 - show/plot/diff above use these at call time
    codes_facts,
    codes_label,
    codes_pairs,
    decoded_arrays,
    quantize_command,
)

store.add_command(quantize_command)
