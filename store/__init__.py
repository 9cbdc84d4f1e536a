"""The teacher-label store: sharded Zarr v3, keyed by cut ID (layout: docs/store-format.md)."""

from mt2kd.store._multi import MultiStore, check_same_teacher, open_stores
from mt2kd.store._quantize_config import QuantizeConfig
from mt2kd.store._quantize_job import quantize
from mt2kd.store._quantizer import (Quantizer, QuantizerConfig, codes_teachers, load_quantizer, quantizer_path,
                                    save_quantizer)
from mt2kd.store._spec import TeacherSpec
from mt2kd.store._store import TeacherStore
from mt2kd.store._verify import Problem
from mt2kd.store._writer import ShardWriter

__all__ = ["TeacherSpec", "TeacherStore", "open_stores", "ShardWriter", "MultiStore", "Problem",
           "check_same_teacher", "Quantizer", "QuantizerConfig", "QuantizeConfig", "quantize", "load_quantizer",
           "codes_teachers", "quantizer_path", "save_quantizer"]
