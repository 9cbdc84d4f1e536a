"""``mt2kd store quantize`` and what ``show``/``plot`` add for a codes (MVQ) teacher.

Every :class:`QuantizeConfig` field but ``source`` (the argument) is a flag
of the same name (``--num-codebooks`` for ``num_codebooks``). torch and the
``multi-quantization`` package load only when the command runs.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import click
import numpy as np

from mt2kd.cli import config_options, one_line_errors
from mt2kd.store._quantize_config import QuantizeConfig
from mt2kd.store._quantizer import codes_teachers, load_quantizer

if TYPE_CHECKING:
    from mt2kd.store._store import TeacherStore

_HELP = {f.name: f"QuantizeConfig.{f.name}." for f in dataclasses.fields(QuantizeConfig)}
_HELP["out"] = "QuantizeConfig.out: the codes store to write."


@click.command("quantize")
@click.argument("source")
@config_options(QuantizeConfig, _HELP, extra={"out": {"required": True}}, skip=("source",))
@one_line_errors
def quantize_command(source: str, **values: Any) -> None:
    """Train an MVQ quantiser on SOURCE's frames and write every cut's codes (uint8) to a new store.

    The codes store has SOURCE's shards and cut IDs and one teacher,
    TEACHER_mvq ([T, num_codebooks] uint8); the quantiser is saved in it
    (quantizers/TEACHER_mvq.safetensors) with its fingerprint. Rerunning
    resumes: committed shards are skipped and the quantiser is read back.

    Example: mt2kd store quantize labels.zarr --teacher whisper --out codes.zarr --num-codebooks 8
    """
    from mt2kd.store._quantize_job import quantize

    summary = quantize(QuantizeConfig(source=source, **values), echo=click.echo)
    click.echo(f"wrote {summary.num_shards_written} of {summary.num_shards} shards of {summary.codes_teacher} to "
               f"{summary.out} ({summary.num_failures} cuts without codes); relative reconstruction error "
               f"{summary.rel_error:.4f} on held-out frames ({summary.seconds:.1f} s).")


def codes_facts(ts: TeacherStore, teacher: str, cut_id: str, codes: np.ndarray) -> dict[str, Any]:
    """What ``show`` says of a cut's codes: the quantiser, the decoded frames and, when it can, this cut's error.

    The cut's own relative reconstruction error needs its float frames:
    they are read from the store the codes were made from (attrs
    ``quantize.source``), when that store can still be opened and holds the cut.
    """
    quantizer = load_quantizer(ts, teacher)
    decoded = quantizer.decode(codes)
    facts: dict[str, Any] = {"quantizer_fingerprint": quantizer.fingerprint[:16],
                             "heldout_rel_error": quantizer.config.rel_error,
                             "decoded_shape": list(decoded.shape), "decoded_mean": float(decoded.mean()),
                             "decoded_std": float(decoded.std())}
    frames = source_frames(ts, teacher, cut_id)
    if frames is not None and frames.shape[0] == codes.shape[0]:
        facts["rel_error"] = quantizer.relative_error(frames, codes)
    return facts


def source_frames(ts: TeacherStore, teacher: str, cut_id: str) -> np.ndarray | None:
    """The float frames ``teacher``'s codes of ``cut_id`` were made from, if the source store has them."""
    from mt2kd.errors import MT2KDError
    from mt2kd.store._store import TeacherStore

    source_url = (ts.attrs.get("quantize") or {}).get("source")
    codes_of = ts.specs[teacher].config.get("codes_of")
    if not source_url or not codes_of:
        return None
    try:
        source = TeacherStore.open(source_url)
        if cut_id not in source or not source.num_frames(cut_id, codes_of):
            return None
        return source.get_many([cut_id], teachers=[codes_of])[0][codes_of]
    except (MT2KDError, OSError):
        return None


def codes_pairs(facts: dict[str, Any]) -> list[tuple[str, Any]]:
    """``key : value`` lines of :func:`codes_facts`."""
    pairs: list[tuple[str, Any]] = [("Quantizer", facts["quantizer_fingerprint"]),
                                    ("Decoded", f"[{', '.join(map(str, facts['decoded_shape']))}] float32, mean "
                                                f"{facts['decoded_mean']:.6g}, std {facts['decoded_std']:.6g}"),
                                    ("Rel. error held-out", f"{facts['heldout_rel_error']:.4f}")]
    if "rel_error" in facts:
        pairs.append(("Rel. error this cut", f"{facts['rel_error']:.4f}"))
    return pairs


def codes_label(ts: TeacherStore, teacher: str, cut_id: str, codes: np.ndarray) -> str:
    """The plot title's name of a codes teacher: decoded, with the reconstruction error."""
    facts = codes_facts(ts, teacher, cut_id, codes)
    error = facts.get("rel_error", facts["heldout_rel_error"])
    return f"{teacher} decoded (rel. error {error:.3f}{'' if 'rel_error' in facts else ' held-out'})"


def decoded_arrays(ts: TeacherStore, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``arrays`` with every codes teacher's codes decoded back to frames (what ``plot`` draws)."""
    return {name: load_quantizer(ts, name).decode(a) if name in codes_teachers(ts) else a
            for name, a in arrays.items()}
