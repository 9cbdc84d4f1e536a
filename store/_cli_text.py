"""Text and facts behind ``mt2kd store``: aligned ``key : value`` lines, value summaries, store diffs.

Everything here is plain functions of stores and dicts, so the commands in
``_cli.py`` stay thin and these pieces can be tested and reused. Nothing
imports torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mt2kd._console import human_bytes

if TYPE_CHECKING:
    from mt2kd.store import TeacherSpec, TeacherStore

AUDIOSET_CLASSES = 527  # a clip teacher of this size emits AudioSet logits
TOP_K = 10  # logits listed by `show` and drawn by `plot`
READ_BATCH = 64  # cuts per get_many while scanning a whole store
KEY_WIDTH = 20  # column of the ':' in key : value output
FAILURES_SHOWN = 2 * TOP_K  # recorded failures listed one per line (--json lists all)
RANDOM_NOTE = "random teacher weights in {path}; its outputs are for tests and demos, not real labels"


# ---------------------------------------------------------------- key : value lines


def has_random_teachers(ts: TeacherStore) -> bool:
    """Whether the store says its teachers had random weights (attrs ``random_teachers``): not real labels."""
    return ts.attrs.get("random_teachers") is True


def random_lines(ts: TeacherStore, path: str) -> list[str]:
    """The NOTE line of a store made with random-weight teachers (its --json says ``random_teachers``).

    A ``key : value`` line, aligned with the output it heads: ``NOTE : random teacher weights ...``.
    """
    return kv_lines([("NOTE", RANDOM_NOTE.format(path=path))]) if has_random_teachers(ts) else []


def info_facts(ts: TeacherStore) -> dict[str, Any]:
    """What ``mt2kd store info --json`` prints: :meth:`TeacherStore.info` with each teacher's config."""
    facts = ts.info()
    for name, spec in ts.specs.items():  # the teacher options (whisper mode, layer) belong in the summary
        facts["teachers"][name].setdefault("config", spec.config)
    return facts


def info_text(ts: TeacherStore, path: str | None = None) -> list[str]:
    """The lines ``mt2kd store info`` prints for ``ts`` (``path``: how to name it, its URL by default).

    Examples
    --------
    >>> print("\\n".join(info_text(TeacherStore.open("runs/demo.zarr"))))  # doctest: +SKIP
    Type                : mt2kd.TeacherStore
    ...
    """
    return [*random_lines(ts, path or ts.url), *info_lines(info_facts(ts))]


def kv_lines(pairs: Iterable[tuple[str, Any]], indent: int = 0) -> list[str]:
    """Aligned ``key : value`` lines, zarr ``ArrayInfo`` style."""
    pad = " " * indent
    return [f"{pad}{key:<{KEY_WIDTH - indent}}: {value}" for key, value in pairs]


def fmt_number(value: Any, fmt: str = "{:,}") -> str:
    return "-" if value is None else fmt.format(value)


def info_lines(facts: Mapping[str, Any]) -> list[str]:
    lines = kv_lines([
        ("Type", "mt2kd.TeacherStore"), ("Store", facts["url"]),
        ("Format version", fmt_number(facts["format_version"], "{}")),
        ("Teachers", ", ".join(facts["teachers"])), ("Cuts", fmt_number(facts["num_cuts"])),
        ("Committed shards", shards_text(facts)), ("Being written", writers_text(facts["writers"])),
        ("Failures", fmt_number(facts["num_failures"]) + failure_kinds_text(facts.get("failure_kinds", {}))),
        *([("Torn records", ", ".join(sorted(facts["torn_records"]))
            + " (not committed: a resumed run writes them again; clean removes them once stale)")]
          if facts.get("torn_records") else []),
        ("Audio hours", fmt_number(facts["audio_hours"], "{:,.3f}")),
        ("Bytes on disk", fmt_bytes(facts["bytes_on_disk"])),
        ("Teacher data", fmt_bytes(facts["teacher_bytes_on_disk"])),
        ("Storage ratio", fmt_number(facts["storage_ratio"], "{:.2f}") + " (teacher data / raw float32)"),
        *((f"Attr {key}", json.dumps(value)) for key, value in sorted(facts.get("attrs", {}).items())),
    ])
    if facts.get("failures"):
        # one record per failure: a cut whose teachers failed one by one has one per teacher
        lines += ["", *kv_lines([("Failure records", f"first {min(len(facts['failures']), FAILURES_SHOWN)} "
                                                     f"of {facts['num_failures']:,}")])]
        lines += failure_lines(facts["failures"], FAILURES_SHOWN)
    for name, t in facts["teachers"].items():
        shape = f"[frames, {t['dim']}] at {t['frame_rate']:g} Hz" if t["kind"] == "frames" else f"[{t['dim']}] per cut"
        lines += ["", *kv_lines([("Teacher", name)])]
        lines += kv_lines([
            ("Kind", f"{t['kind']} {shape}"), ("Dtype", t["dtype"]),
            ("Codec", f"{t['codec']} (level {t['codec_level']})"), ("Fingerprint", t["fingerprint"] or "-"),
            ("Cuts", fmt_number(t["num_cuts"])),
            *([("Frames", fmt_number(t["num_frames"])), ("Audio hours", fmt_number(t["audio_hours"], "{:,.3f}"))]
              if t["kind"] == "frames" else []),
            ("Bytes on disk", fmt_bytes(t["bytes_on_disk"])),
            ("Storage ratio", fmt_number(t["storage_ratio"], "{:.2f}")),
        ], indent=2)
        lines += config_lines(t.get("config", {}), indent=2)
    return lines


def shards_text(facts: Mapping[str, Any]) -> str:
    """``7 of 14 planned (not yet: 000007, ...)`` for a store with an extraction plan, else the count."""
    planned, missing = facts.get("num_planned_shards"), facts.get("missing_shards") or []
    if planned is None:
        return fmt_number(facts["num_shards"])
    text = f"{planned - len(missing):,} of {planned:,} planned"
    if missing:
        text += " (not yet: " + ", ".join(missing[:TOP_K]) + (", ..." if len(missing) > TOP_K else "") + ")"
    return text


def writers_text(writers: Sequence[Mapping[str, Any]]) -> str:
    """Shards whose lock is held, by whom, and whether that writer still beats; "none" when there are none."""
    def one(w: Mapping[str, Any]) -> str:
        beat = "" if w["beat_age_s"] is None else f", beat {w['beat_age_s']:g} s ago"
        state = "" if w["alive"] else " (gone: the shard's next writer takes the lock over)"
        return f"{w['shard']} by pid {w['pid']} on {w['host']}{beat}{state}"

    return "; ".join(map(one, writers)) if writers else "none"


def failure_lines(failures: Sequence[Mapping[str, Any]], limit: int = FAILURES_SHOWN) -> list[str]:
    """One ``  * cut ...: reason`` line per recorded failure, the first ``limit`` of them."""
    lines = [f"  * cut {f['cut_id']!r}, "
             + ("all teachers" if f["teacher"] is None else f"teacher {f['teacher']!r}")
             + f" (shard {f['shard']}): {f['reason']}" for f in failures[:limit]]
    if len(failures) > limit:
        lines.append(f"  ... {len(failures) - limit:,} more failures (--json lists all)")
    return lines


def failure_kinds_text(kinds: Mapping[str, int]) -> str:
    """`` (20 missing audio file, 4 no teacher output)``; empty without failures."""
    return " (" + ", ".join(f"{count:,} {kind}" for kind, count in kinds.items()) + ")" if kinds else ""


def failed_cut_text(cut_id: str, failures: Sequence[Mapping[str, Any]]) -> str | None:
    """Why ``cut_id`` has no outputs, when the extraction recorded it as failed as a whole; else None."""
    reasons = [f for f in failures if f["cut_id"] == cut_id and f["teacher"] is None]
    if not reasons:
        return None
    return (f"cut {cut_id!r} has no teacher outputs: the extraction recorded it as failed ("
            + "; ".join(f"shard {f['shard']}: {f['reason']}" for f in reasons) + ").")


def config_lines(config: Mapping[str, Any], indent: int = 0) -> list[str]:
    """A teacher's config as ``Config : key = value`` lines, nested keys dotted, the ``=`` aligned.

    Examples
    --------
    >>> print("\\n".join(config_lines({"mode": "trim", "layer": -1})))
    Config              : layer = -1
                          mode  = trim
    """
    flat = flatten(config)
    if not flat:
        return kv_lines([("Config", "-")], indent)
    width = max(len(key) for key in flat)
    values = [f"{key:<{width}} = {value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)}"
              for key, value in sorted(flat.items())]  # strings bare: `mode = trim` reads best; --json is exact
    return [*kv_lines([("Config", values[0])], indent), *(" " * (KEY_WIDTH + 2) + value for value in values[1:])]


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and scalars stay values."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def fmt_bytes(num_bytes: int | None) -> str:
    return "-" if num_bytes is None else f"{num_bytes:,} ({human_bytes(num_bytes)})"


def shape_text(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(n) for n in shape) + "]"


def summarize(array: np.ndarray, spec: TeacherSpec | None) -> dict[str, Any]:
    """Shape and value statistics of one teacher output, plus top logits or a norm for clip outputs."""
    if spec is not None and spec.kind == "text":
        return {"shape": list(array.shape), "dtype": str(array.dtype), "text": spec.text_of(array)}
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


def show_pairs(facts: Mapping[str, Any]) -> list[tuple[str, Any]]:
    if "text" in facts:
        return [("Bytes", facts["shape"][0]), ("Text", repr(facts["text"]))]
    pairs: list[tuple[str, Any]] = [("Shape", shape_text(facts["shape"])), ("Dtype", facts["dtype"])]
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


# ---------------------------------------------------------------- reading


def scan(ts: TeacherStore, cut_ids: Sequence[str], teachers: Sequence[str] | None = None
          ) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """(cut ID, {teacher: array}) of every cut, read in batches so reads are coalesced."""
    for start in range(0, len(cut_ids), READ_BATCH):
        chunk = cut_ids[start:start + READ_BATCH]
        yield from zip(chunk, read_cuts(ts, chunk, teachers))


def read_cuts(ts: TeacherStore, cut_ids: Sequence[str], teachers: Sequence[str] | None = None
              ) -> list[dict[str, np.ndarray]]:
    """``ts.get_many``, but data that cannot be decoded is a StoreFormatError naming the cut, teacher and shard."""
    from mt2kd.errors import ConfigError, CutNotFoundError, StoreFormatError

    try:
        return ts.get_many(cut_ids, teachers=teachers)
    except (ConfigError, CutNotFoundError):
        raise  # the caller's mistake, already a one-line message
    except (StoreFormatError, OSError, ValueError, RuntimeError) as e:  # numcodecs raises RuntimeError, ValueError
        cut_id, teacher, error = _first_unreadable(ts, cut_ids, teachers or list(ts.specs))
        if cut_id is None:
            raise StoreFormatError(f"{ts.url}: cuts {cut_ids[0]!r} .. {cut_ids[-1]!r} could not be read: "
                                   f"{type(e).__name__}: {e}") from e
        record = ts._index.where[cut_id][0]
        raise StoreFormatError(f"{ts.url}: cut {cut_id!r}, teacher {teacher!r} (shard {record.name}, "
                               f"{record.path}) could not be decoded: {type(error).__name__}: {error}") from error


def _first_unreadable(ts: TeacherStore, cut_ids: Sequence[str], teachers: Sequence[str]
                      ) -> tuple[str | None, str | None, BaseException | None]:
    """(cut ID, teacher, error) of the first output that fails to read on its own; Nones when each reads."""
    for cut_id in cut_ids:
        for teacher in teachers:
            try:
                ts.get_many([cut_id], teachers=[teacher])
            except (OSError, ValueError, RuntimeError) as e:
                return cut_id, teacher, e
    return None, None, None


# ---------------------------------------------------------------- diff


class TeacherDiff:
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
            self.shape_mismatches.append(f"{cut_id}: {shape_text(a.shape)} vs {shape_text(b.shape)}")
            return
        a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
        abs_diff = np.abs(a64 - b64)
        self.num_cuts += 1
        if abs_diff.size:
            self.max_abs = max(self.max_abs, float(abs_diff.max()))
        self.sum_abs += float(abs_diff.sum())
        self.num_values += abs_diff.size
        if not a64.size:  # an empty text: nothing to compare, and no row to reshape into
            return
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
    diffs = {t: TeacherDiff() for t in teachers}
    for (cut_id, got_a), (_, got_b) in zip(scan(a, shared, teachers), scan(b, shared, teachers)):
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


def diff_lines(facts: Mapping[str, Any]) -> list[str]:
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
