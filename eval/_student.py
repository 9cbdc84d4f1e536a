"""Running a trained student over cuts: its AT logits, SV embeddings and frame L1 to the teacher.

Cuts go through the model in padded batches under ``torch.no_grad``; each
cut's outputs are cut back to its own valid frames before scoring, so the
numbers do not depend on the batch size. A cut whose audio cannot be read is
skipped and recorded with its reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm

from mt2kd.cuts import SAMPLE_RATE
from mt2kd.errors import ConfigError
from mt2kd.eval._config import EvalConfig
from mt2kd.eval._inputs import iter_outputs, spec_dims

if TYPE_CHECKING:
    from mt2kd.store import ReadableStore


@dataclasses.dataclass
class StudentResults:
    """Per-cut student outputs and the running frame-L1 sums."""

    at_logits: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # cut ID -> [num_classes]
    sv_embeddings: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # cut ID -> [embedding_dim]
    l1_sum: float = 0.0  # sum of |student - teacher| over aligned valid frames and dims
    num_l1_values: int = 0  # how many values l1_sum covers (frames x dims)
    num_l1_frames: int = 0  # aligned valid frames that took part
    num_l1_cuts: int = 0  # cuts with a frame target
    failures: dict[str, str] = dataclasses.field(default_factory=dict)  # cut ID -> why it was skipped
    num_classes: int = 0  # AT head width
    info: dict[str, Any] = dataclasses.field(default_factory=dict)  # checkpoint and model facts
    target_scores: Any = None  # mt2kd.train.TargetScores: each KD target's own loss over the cuts

    def kd_l1_summary(self, teacher: str) -> dict[str, Any]:
        mean = self.l1_sum / self.num_l1_values if self.num_l1_values else None
        return {"teacher": teacher, "l1": mean, "num_cuts": self.num_l1_cuts, "num_frames": self.num_l1_frames,
                "num_cuts_failed": len(self.failures), "failures": dict(self.failures)}


def run_student(config: EvalConfig, cuts: Sequence[Any], store: ReadableStore) -> StudentResults:
    """Student outputs for every readable cut, and its L1 against the frame teacher.

    Examples
    --------
    >>> res = run_student(EvalConfig(("dev.jsonl",), ("dev.zarr",), checkpoint="avg.pt"), cuts, store)  # doctest: +SKIP
    >>> res.kd_l1_summary("whisper")["l1"]  # doctest: +SKIP
    0.31
    """
    from mt2kd.train import load_student

    check_device(config.device)
    model, student_config = load_student(config.checkpoint)
    _check_heads(config, student_config, spec_dims(store))
    model = model.to(config.device).eval()
    has_frames = config.frames_teacher in spec_dims(store)
    from mt2kd.train import TargetScores

    results = StudentResults(num_classes=int(_head_width(student_config, "mean") or 0),
                             info=_model_info(config, model, student_config),
                             target_scores=TargetScores(config.checkpoint, store.specs))
    progress = tqdm(total=sum(cut.duration for cut in cuts) / 3600.0, unit="h", desc="student",
                    bar_format="{desc}: {n:.2f}/{total:.2f} h audio [{elapsed}<{remaining}, {rate_fmt}]",
                    disable=None)  # None: shown on a terminal only
    for start in range(0, len(cuts), config.batch_size):
        batch = cuts[start:start + config.batch_size]
        fbanks = _features(batch, results.failures)
        if fbanks:
            out = _score_batch(model, fbanks, config, store if has_frames else None, results)
            results.target_scores.add(out, [cut for cut in batch if cut.id in fbanks], store)
        progress.update(sum(cut.duration for cut in batch) / 3600.0)
    progress.close()
    return results


def check_device(device: str) -> torch.device:
    """``device`` as a torch device this machine has; a ConfigError naming what it shows otherwise."""
    import os

    try:
        parsed = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"device must be a torch device such as 'cpu', 'cuda' or 'cuda:1'. Got {device!r}.") from e
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        seen = f"{count} CUDA device(s)" if count else "no CUDA device"
        raise ConfigError(f"device {device!r} must be a GPU this machine shows. Got {seen} "
                          f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}). "
                          f"Run on a GPU node, or pass --device cpu.")
    return parsed


def _check_heads(config: EvalConfig, student_config: Any, dims: dict[str, int]) -> None:
    """Refuse a student whose heads cannot be compared with the store, before any audio is read."""
    pairs = [(config.tagging_teacher, "num_classes", "mean"), (config.frames_teacher, "teacher_frame_dim", "frames")]
    for teacher, field, kind in pairs:
        width = _head_width(student_config, kind)
        if teacher in dims and width is not None and width != dims[teacher]:
            raise ConfigError(
                f"student {field} must equal the {teacher!r} teacher's dim {dims[teacher]} in the stores "
                f"{list(config.stores)}. Got {width} in the checkpoint {config.checkpoint}: evaluate with the "
                f"stores the student was trained from, or name another teacher of the stores with "
                f"--{'frames' if field == 'teacher_frame_dim' else 'tagging'}-teacher.")


def _head_width(student_config: Any, kind: str) -> int | None:
    """Width of the student's first head of ``kind`` (M_AT: ``mean``, M_ASR: ``frames``), None without one."""
    return student_config.head_width(kind)


def _model_info(config: EvalConfig, model: torch.nn.Module, student_config: Any) -> dict[str, Any]:
    to_dict = getattr(student_config, "to_dict", None)
    return {"checkpoint": config.checkpoint, "num_parameters": sum(p.numel() for p in model.parameters()),
            "student_config": to_dict() if callable(to_dict) else None}


def load_waveform(cut: Any) -> np.ndarray:
    """A cut's audio as 16 kHz mono float32 samples (channels averaged)."""
    if cut.sampling_rate != SAMPLE_RATE:
        cut = cut.resample(SAMPLE_RATE)
    audio = np.asarray(cut.load_audio(), dtype=np.float32)
    return audio.mean(axis=0) if audio.ndim == 2 else audio


def _features(batch: Sequence[Any], failures: dict[str, str]) -> dict[str, torch.Tensor]:
    from mt2kd.train import compute_fbank

    fbanks: dict[str, torch.Tensor] = {}
    for cut in batch:
        try:
            fbanks[cut.id] = torch.as_tensor(compute_fbank(load_waveform(cut)))
        except Exception as e:  # any unreadable or empty audio: skip the cut, keep its reason
            failures[cut.id] = f"{type(e).__name__}: {e}"
    return fbanks


@torch.no_grad()
def _score_batch(model: torch.nn.Module, fbanks: dict[str, torch.Tensor], config: EvalConfig,
                 store: ReadableStore | None, results: StudentResults) -> Any:
    cut_ids = list(fbanks)
    num_frames = torch.tensor([fbanks[c].shape[0] for c in cut_ids])
    padded = torch.nn.utils.rnn.pad_sequence([fbanks[c] for c in cut_ids], batch_first=True)
    out = model(padded.to(config.device), num_frames.to(config.device))
    kinds = set(out.head_kinds.values())  # a student trained on other targets may lack M_AT or M_SV
    if "mean" in kinds:
        at_logits = out.at_logits.float().cpu().numpy()
        for row, cut_id in enumerate(cut_ids):
            results.at_logits[cut_id] = at_logits[row].astype(np.float64)
    if "attentive" in kinds:
        sv = out.sv_embedding.float().cpu().numpy()
        for row, cut_id in enumerate(cut_ids):
            results.sv_embeddings[cut_id] = sv[row].astype(np.float64)
    if store is not None and "frames" in kinds:
        _add_frame_l1(out, cut_ids, store, config.frames_teacher, results)
    return out


def _add_frame_l1(out: Any, cut_ids: list[str], store: ReadableStore, teacher: str, results: StudentResults) -> None:
    # training's own alignment rule (truncate to the shorter, mask the rest), so eval L1 means train L1
    from mt2kd.train import align_frames

    targets = dict(iter_outputs(store, cut_ids, teacher))
    rows = [row for row, cut_id in enumerate(cut_ids) if cut_id in targets]
    if not rows:
        return
    frames = [torch.as_tensor(targets[cut_ids[row]], dtype=torch.float32) for row in rows]
    teacher_frames = torch.nn.utils.rnn.pad_sequence(frames, batch_first=True)
    teacher_lengths = torch.tensor([len(f) for f in frames])
    index = torch.tensor(rows, device=out.frames.device)
    student, target, mask = align_frames(out.frames[index].float().cpu(), out.num_frames[index].cpu(),
                                         teacher_frames, teacher_lengths)
    results.l1_sum += float(((student - target).abs() * mask[..., None]).sum())
    results.num_l1_frames += int(mask.sum())
    results.num_l1_values += int(mask.sum()) * student.shape[-1]
    results.num_l1_cuts += len(rows)
