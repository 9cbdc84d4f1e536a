"""Student checkpoints: write, rotate, load, average.

A checkpoint is one ``torch.save`` dict holding only tensors and plain
Python values (loadable with ``weights_only=True``):

``format``, ``kind``, ``student_config``, ``train_config``, ``step``, ``model``,
``optimizer``, ``scheduler``, ``sampler``, ``rng``; a stage-2 checkpoint adds
what its heads need (the tokenizer's bytes, the speaker list, the ASR config).

``kind`` says which stage wrote it: ``"kd"`` (stage 1, and averages of it;
checkpoints without the key are stage 1) or ``"finetune"`` (stage 2).
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mt2kd.errors import CheckpointError, CheckpointNotFoundError
from mt2kd.train._config import StudentConfig, checkpoint_path
from mt2kd.train._model import Student

FORMAT = "mt2kd-student-1"  # bumped when the checkpoint layout changes
_NAME = re.compile(r"^checkpoint-(\d+)\.pt$")
KINDS = {"kd": "stage-1 KD (or an average of stage-1 checkpoints)", "finetune": "stage-2 fine-tuned"}
_RUN_STATE = ("optimizer", "scheduler", "sampler", "rng", "batches_in_epoch")  # for resuming, not for using


def list_checkpoints(exp_dir: str | Path) -> list[Path]:
    """Checkpoints in ``exp_dir``, oldest step first."""
    folder = Path(exp_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(state: dict[str, Any], exp_dir: str | Path, keep_last: int) -> Path:
    """Write ``state`` for its step (atomically: temp file then rename) and drop all but the last ``keep_last``."""
    path = checkpoint_path(exp_dir, int(state["step"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.tmp")
    torch.save({"format": FORMAT, **state}, tmp)
    _fsync(tmp)  # on disk before it replaces anything: a crash never leaves a torn checkpoint under the name
    tmp.replace(path)
    _fsync(path.parent)
    for old in list_checkpoints(exp_dir)[:-keep_last]:
        old.unlink()
    return path


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_latest_checkpoint(exp_dir: str | Path, warn: Callable[[str], None]) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of ``exp_dir`` that reads, with its path; None when there is none.

    A newer one that does not read (empty or cut short: a disk that filled
    up, a copy that broke) is passed over with a ``warn`` naming it and the
    one used instead; when none reads, the newest one's error is raised.
    """
    found = list_checkpoints(exp_dir)
    broken: list[tuple[Path, CheckpointError]] = []
    for path in reversed(found):
        try:
            data = read_checkpoint(path)
        except CheckpointError as e:
            broken.append((path, e))
            continue
        for bad, error in broken:
            warn(f"checkpoint {str(bad)!r} cannot be read ({error}); resuming from the previous good one, "
                 f"{str(path)!r}")
        return path, data
    if broken:
        raise broken[0][1]
    return None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint dict on CPU, refusing anything that is not one of ours."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"student checkpoint must be an existing file. Got {str(path)!r}.")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{str(path)!r} must be a torch checkpoint of plain tensors. Got: {e}") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{str(path)!r} must have format {FORMAT!r}. Got {got!r}.")
    return data


def checkpoint_kind(data: dict[str, Any]) -> str:
    return str(data.get("kind", "kd"))  # written before kinds were recorded: stage 1


def read_checkpoint_of_kind(path: str | Path, kind: str, role: str) -> dict[str, Any]:
    """:func:`read_checkpoint`, refusing a checkpoint another stage wrote; ``role`` names it in the error.

    Examples
    --------
    >>> data = read_checkpoint_of_kind("exp/avg.pt", "kd", "--init")  # doctest: +SKIP
    """
    data = read_checkpoint(path)
    found = checkpoint_kind(data)
    if found != kind:
        raise CheckpointError(f"{role} {str(path)!r} must be a {KINDS[kind]} checkpoint. Got a "
                              f"{KINDS.get(found, repr(found))} checkpoint (kind {found!r}).")
    return data


def student_weights(data: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The student's own weights of a checkpoint of either kind (stage 2 keeps them under ``student.``)."""
    if checkpoint_kind(data) != "finetune":
        return data["model"]
    return {k.removeprefix("student."): v for k, v in data["model"].items() if k.startswith("student.")}


def load_student(checkpoint_path: str | Path) -> tuple[Student, StudentConfig]:
    """Build the student from a checkpoint's own config and load its weights.

    Returns the model in eval mode on CPU, and its :class:`StudentConfig`.

    Examples
    --------
    >>> model, config = load_student("exp/checkpoint-00002000.pt")  # doctest: +SKIP
    >>> out = model(fbank[None], torch.tensor([len(fbank)]))  # doctest: +SKIP
    """
    data = read_checkpoint(checkpoint_path)
    config = StudentConfig.from_dict(data["student_config"])
    model = Student(config)
    try:
        model.load_state_dict(student_weights(data))
    except RuntimeError as e:
        raise CheckpointError(f"weights in {str(checkpoint_path)!r} must match its student_config. Got: {e}") from e
    return model.eval(), config


def average_checkpoints(paths: list[str | Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the model weights of several checkpoints.

    Floating-point tensors are averaged in float64 and cast back; integer
    buffers (if any) are taken from the last checkpoint.

    Examples
    --------
    >>> state = average_checkpoints(list_checkpoints("exp")[-5:])  # doctest: +SKIP
    """
    if not paths:
        raise CheckpointError("average_checkpoints needs at least one checkpoint. Got none.")
    models = [read_checkpoint(p)["model"] for p in paths]
    keys = list(models[-1])
    for path, model in zip(paths, models):
        if list(model) != keys:
            raise CheckpointError(f"{str(path)!r} must hold the same parameters as {str(paths[-1])!r}.")
    averaged = {}
    for key in keys:
        last = models[-1][key]
        if last.is_floating_point():
            total = sum(m[key].to(torch.float64) for m in models)
            averaged[key] = (total / len(models)).to(last.dtype)
        else:
            averaged[key] = last.clone()
    return averaged


def capture_rng() -> dict[str, Any]:
    """Python, numpy and torch RNG states as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(np.asarray(keys).copy()), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_average(exp_dir: str | Path, num_last: int, out_path: str | Path) -> list[Path]:
    """Write the mean weights of the last ``num_last`` checkpoints as a loadable checkpoint.

    The result keeps the newest checkpoint's configs, step and kind (and a
    stage-2 checkpoint's tokenizer and speaker list) and drops its optimiser
    and sampler state (an average is for evaluation or --init, not resuming).
    """
    if num_last < 1:
        raise CheckpointError(f"num_last must be >= 1. Got {num_last}.")
    found = list_checkpoints(exp_dir)[-num_last:]
    if not found:
        raise CheckpointNotFoundError(f"{str(exp_dir)!r} must hold checkpoint-*.pt files. Got none.")
    newest = read_checkpoint(found[-1])
    state: dict[str, Any] = {k: v for k, v in newest.items() if k not in (*_RUN_STATE, "format", "model")}
    state["model"] = average_checkpoints(list(found))
    state["averaged_from"] = [p.name for p in found]
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, **state}, out_path)
    return found
