"""A frames teacher whose output is written as MVQ codes: ``--teacher whisper=CKPT:mvq=QUANTIZER``.

The wrapped teacher runs as usual; each cut's frames are encoded on the
same device by the quantiser (the ``multi-quantization`` package's
encoder) and only the codes, uint8 ``[T, num_codebooks]``, reach the store,
as teacher ``<name>_mvq``. So a large corpus never has its float frames on
disk. ``QUANTIZER`` is a quantiser file (``quantizers/*.safetensors`` of a
store made by ``mt2kd store quantize``) or such a store itself; its
fingerprint is checked on load, and the job copies the file into the new
store, where the codes spec names it, so the codes decode back to frames.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mt2kd.errors import ConfigError
from mt2kd.extract._teacher import Teacher, store_name
from mt2kd.store import (
    Quantizer,
    TeacherSpec,
    TeacherStore,
    codes_teachers,
    load_quantizer,
    quantizer_path,
    save_quantizer,
)

ENCODE_ROWS = 1024  # frames encoded in one call (the package's index refinement is memory hungry)


def read_quantizer(path: str | Path) -> Quantizer:
    """The quantiser at ``path``: a quantiser file, or a codes store holding exactly one codes teacher."""
    path = Path(path)
    if path.is_dir():
        store = TeacherStore.open(path)
        codes = codes_teachers(store)
        if len(codes) != 1:
            raise ConfigError(f"mvq={path} must be a quantiser file or a store with one codes teacher. Got a store "
                              f"with codes teachers {codes}.")
        return load_quantizer(store, codes[0])
    if not path.is_file():
        raise ConfigError(f"mvq= must name a quantiser file (.safetensors) or a codes store. Got {str(path)!r}, "
                          f"which does not exist.")
    return Quantizer.load(path.read_bytes(), str(path))


class CodesTeacher(Teacher):
    """Runs ``inner`` and encodes its frames with a quantiser; the store sees only the codes.

    Examples
    --------
    >>> teacher = load_teacher("whisper", "large-v3.pt", mvq="codes.zarr")  # doctest: +SKIP
    >>> teacher.spec.name, teacher.spec.dtype  # doctest: +SKIP
    ('whisper_mvq', 'uint8')
    """

    def __init__(self, inner: Teacher, quantizer_path: str | Path) -> None:
        super().__init__(inner.checkpoint, {**inner.options, "mvq": str(quantizer_path)}, inner.precision)
        self.inner = inner
        self.name = store_name(inner.name, self.options)
        self.quantizer = read_quantizer(quantizer_path)
        self.quantizer_path = str(quantizer_path)
        self._package: Any = None
        spec = inner.spec
        if spec.kind != "frames" or spec.dim != self.quantizer.config.dim:
            raise ConfigError(f"mvq={quantizer_path}: the quantiser takes {self.quantizer.config.dim}-D frames; "
                              f"teacher {inner.name} must emit those. Got {spec.kind} outputs of dim {spec.dim}.")

    @property
    def fingerprint(self) -> str:
        """The wrapped teacher's fingerprint and the quantiser's, hashed together."""
        return hashlib.sha256(f"{self.inner.fingerprint}:{self.quantizer.fingerprint}".encode()).hexdigest()[:16]

    @property
    def spec(self) -> TeacherSpec:
        source, q = self.inner.spec, self.quantizer
        config = {"codes_of": source.name, "quantizer": quantizer_path(self.name),
                  "quantizer_fingerprint": q.fingerprint, "quantizer_source": self.quantizer_path,
                  "num_codebooks": q.config.num_codebooks, "codebook_size": q.config.codebook_size,
                  "rel_error": q.config.rel_error, "source_dim": source.dim, "source_fingerprint": source.fingerprint,
                  "random_init": bool(source.config.get("random_init", False)), "source_config": source.config}
        return TeacherSpec(self.name, "frames", q.config.num_codebooks, frame_rate=source.frame_rate, dtype="uint8",
                           fingerprint=self.fingerprint, config=config)

    def _to(self, device: str) -> None:
        self.inner.to(device)
        self._package = self.quantizer.to_package(device)

    def _extract(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self._package is None:
            self._package = self.quantizer.to_package(self.device)
        return [self._encode(frames) for frames in self.inner.extract(waveforms)]

    def _encode(self, frames: np.ndarray) -> np.ndarray:
        return np.concatenate([self.quantizer.encode(frames[i:i + ENCODE_ROWS], self._package)
                               for i in range(0, frames.shape[0], ENCODE_ROWS)])


def save_quantizers(store: TeacherStore, specs: Sequence[TeacherSpec]) -> None:
    """Copy the quantiser of every codes teacher made by extraction (``quantizer_source``) into ``store``."""
    for spec in specs:
        source = spec.config.get("quantizer_source")
        if source:
            save_quantizer(store, spec.name, read_quantizer(source))
