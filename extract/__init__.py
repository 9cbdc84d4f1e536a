"""Frozen teachers and the distributed extraction job."""

from mt2kd.extract._teacher import SAMPLE_RATE, Teacher, load_teacher, register_teacher, teacher_names

__all__ = ["SAMPLE_RATE", "Teacher", "load_teacher", "register_teacher", "teacher_names"]
