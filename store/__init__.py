"""The teacher-label store: sharded Zarr v3, keyed by cut ID."""

from mt2kd.store._spec import TeacherSpec

__all__ = ["TeacherSpec"]
