"""Distillation fidelity: L1 distance between student and teacher frames.

The definition is the training L1 term: the mean absolute difference over
valid frames and feature dimensions (so already divided by the frame
dimension). Student and teacher frames are aligned the way training aligns
them: both truncated to the shorter of the two, the rest masked. The student
evaluation itself calls training's ``align_frames`` on torch tensors; these
numpy functions apply the same rule to arrays saved elsewhere.
"""

from __future__ import annotations

import numpy as np

from mt2kd.errors import ValidationError


def truncate_to_shorter(student: np.ndarray, teacher: np.ndarray,
                        mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut the time axis (the one before the last) of both to the shorter length.

    Returns the two truncated arrays and a boolean mask of valid frames, of
    their shape without the last axis (all True when no mask was given).
    """
    num_frames = min(student.shape[-2], teacher.shape[-2])
    student, teacher = student[..., :num_frames, :], teacher[..., :num_frames, :]
    if mask is None:
        return student, teacher, np.ones(student.shape[:-1], dtype=bool)
    return student, teacher, np.asarray(mask, dtype=bool)[..., :num_frames]


def kd_l1_parts(student_frames: np.ndarray, teacher_frames: np.ndarray, mask: np.ndarray | None = None,
                teacher_mask: np.ndarray | None = None) -> tuple[float, int]:
    """Sum of absolute differences over valid frames and dims, and how many values it covers.

    Summing the parts over cuts and dividing once gives the L1 over a whole
    test set with every frame weighted equally, not every cut.
    """
    student = np.asarray(student_frames, dtype=np.float64)
    teacher = np.asarray(teacher_frames, dtype=np.float64)
    _check_shapes(student, teacher, mask, teacher_mask)
    student, teacher, valid = truncate_to_shorter(student, teacher, mask)
    if teacher_mask is not None:
        valid = valid & np.asarray(teacher_mask, dtype=bool)[..., : valid.shape[-1]]
    diff = np.abs(student - teacher)[valid]  # [num_valid_frames, dim]
    return float(diff.sum()), int(diff.size)


def kd_l1(student_frames: np.ndarray, teacher_frames: np.ndarray, mask: np.ndarray | None = None,
          teacher_mask: np.ndarray | None = None) -> float:
    """Mean absolute difference between aligned student and teacher frames.

    Parameters
    ----------
    student_frames, teacher_frames : array [T, D] or [B, T, D]
        Frame sequences; the time axes may differ in length.
    mask : array [T] or [B, T], optional
        True for valid student frames (padding is False). Frames beyond the
        shorter sequence are dropped whatever the mask says.
    teacher_mask : array [T'] or [B, T'], optional
        True for valid teacher frames: give it for a padded batch of teacher
        frames, or their padding counts as targets of zeros.

    Returns
    -------
    float
        Mean over valid frames and dims; NaN when no frame is valid.

    Examples
    --------
    >>> kd_l1(np.ones((3, 2)), np.zeros((2, 2)))  # third student frame has no target
    1.0
    """
    total, num_values = kd_l1_parts(student_frames, teacher_frames, mask, teacher_mask)
    return total / num_values if num_values else float("nan")


def _check_shapes(student: np.ndarray, teacher: np.ndarray, mask: np.ndarray | None,
                  teacher_mask: np.ndarray | None) -> None:
    if student.ndim not in (2, 3) or student.ndim != teacher.ndim:
        raise ValidationError(
            f"frames must both be [T, D] or [B, T, D]. Got {student.shape} and {teacher.shape}.")
    if student.shape[-1] != teacher.shape[-1] or student.shape[:-2] != teacher.shape[:-2]:
        raise ValidationError(
            f"student and teacher frames must agree in batch and dim. Got {student.shape} and {teacher.shape}.")
    if mask is not None and np.shape(mask) != student.shape[:-1]:
        raise ValidationError(f"mask must have the student's shape {student.shape[:-1]}. Got {np.shape(mask)}.")
    if teacher_mask is not None and np.shape(teacher_mask) != teacher.shape[:-1]:
        raise ValidationError(
            f"teacher_mask must have the teacher's shape {teacher.shape[:-1]}. Got {np.shape(teacher_mask)}.")
