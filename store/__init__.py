"""The teacher-label store: sharded Zarr v3, keyed by cut ID (layout: docs/store-format.md).

Readers (training, evaluation) type what they hold as :class:`ReadableStore`,
which a :class:`TeacherStore` and a :class:`MultiStore` both satisfy.
"""

from mt2kd.store._cli_text import info_text
from mt2kd.store._format import shard_name
from mt2kd.store._multi import MultiStore, check_same_teacher, open_stores, open_view
from mt2kd.store._quantize_config import QuantizeConfig
from mt2kd.store._quantize_job import quantize
from mt2kd.store._quantizer import (
                                    Quantizer,
                                    QuantizerConfig,
                                    codes_teachers,
                                    load_quantizer,
                                    quantizer_path,
                                    save_quantizer,
)
from mt2kd.store._setup import check_store_path, open_or_create
from mt2kd.store._spec import TeacherSpec
from mt2kd.store._store import TeacherStore
from mt2kd.store._verify import Problem
from mt2kd.store._view import ReadableStore
from mt2kd.store._writer import ShardWriter

__all__ = ["TeacherSpec", "TeacherStore", "open_stores", "open_view", "ShardWriter", "MultiStore", "Problem",
           "ReadableStore", "check_same_teacher", "info_text", "check_store_path", "open_or_create", "shard_name",
           "Quantizer", "QuantizerConfig", "QuantizeConfig", "quantize", "load_quantizer", "codes_teachers",
           "quantizer_path", "save_quantizer"]
