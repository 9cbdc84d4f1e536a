"""A multi-codebook vector quantiser (MVQ) of frames, saved without pickle and checked against its fingerprint.

The quantiser is trained and applied with the ``multi-quantization``
package (torch); this module holds what a store keeps of it and what a
reader needs without torch:

- ``save`` writes a safetensors file: the package quantiser's parameters
  (float32 tensors) plus, in the file's metadata, the :class:`QuantizerConfig`
  as JSON and the fingerprint, a SHA-256 of that JSON and every tensor's
  name, dtype, shape and bytes;
- ``load`` parses that file (safetensors never unpickles), recomputes the
  fingerprint and refuses a file whose bytes no longer match it, or that is
  not the quantiser a store's spec names;
- ``decode`` turns codes ``[T, num_codebooks]`` back into frames with numpy:
  the sum of one codebook centre per codebook (direct-sum codebooks);
- ``encode`` (torch) runs the package's own encoder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
from typing import TYPE_CHECKING, Any

import numpy as np

from mt2kd._typed import from_dict
from mt2kd.errors import ConfigError, StoreFormatError

if TYPE_CHECKING:
    import torch

    from mt2kd.store._store import TeacherStore

QUANTIZERS_DIR = "quantizers"  # store folder of quantiser files "<teacher>.safetensors"
SUFFIX = ".safetensors"
CONFIG_KEY = "mt2kd_quantizer"  # safetensors metadata: the QuantizerConfig as JSON
FINGERPRINT_KEY = "fingerprint"  # safetensors metadata: SHA-256 of config and tensors
CODEBOOK_SIZE = 256  # entries per codebook: one code is one byte
HEADER_LENGTH_BYTES = 8  # safetensors: little-endian uint64 length of the JSON header
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library refuses larger headers too
# the package quantiser's parameters (its state_dict names) and the two facts this module adds
CENTERS = "centers"  # [num_codebooks, codebook_size, dim]: unscaled codebook centres
CENTERS_SCALE = "centers_scale"  # []: log-scale of the centres (times scale_speed)
TENSORS = ("to_logits.weight", "to_logits.bias", CENTERS, "logits_scale", CENTERS_SCALE, "id_buf")
DATA_MEAN = "data_mean"  # [dim]: the package's estimate of the training data mean (normalises the error)


@dataclasses.dataclass(frozen=True)
class QuantizerConfig:
    """What a quantiser quantises and how it was trained; travels inside its file and the store spec."""

    teacher: str  # the frames teacher whose frames it quantises ("whisper")
    dim: int  # dimension of one frame
    num_codebooks: int  # bytes per frame: one uint8 index per codebook (a power of two)
    codebook_size: int = CODEBOOK_SIZE  # entries per codebook
    source_fingerprint: str = ""  # fingerprint of the teacher whose frames trained it
    train_frames: int = 0  # frames it was trained on
    heldout_frames: int = 0  # frames held out to measure rel_error
    rel_error: float = float("nan")  # the package's relative reconstruction error on the held-out frames
    seed: int = 0  # sampling and training seed
    iters: int = 0  # training steps of each of the package's two phases
    refine_iters: int = 5  # index refinement iterations when encoding
    scale_speed: float = 10.0  # the package quantiser's scale_speed (centres scale = exp(centers_scale x this))
    package: str = ""  # name and version of the package that trained it

    def __post_init__(self) -> None:
        if self.num_codebooks < 1 or self.num_codebooks & (self.num_codebooks - 1):
            raise ConfigError(f"num_codebooks must be a power of two (1, 2, 4, 8, 16, 32). Got {self.num_codebooks}.")
        if self.dim < 1:
            raise ConfigError(f"dim of a quantiser must be >= 1. Got {self.dim}.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantizerConfig:
        return from_dict(cls, data, "quantiser config", tuples=False)


class Quantizer:
    """A trained MVQ quantiser: parameters, config and fingerprint.

    Examples
    --------
    >>> q = Quantizer.load(raw_bytes, "codes.zarr/quantizers/whisper_mvq.safetensors")  # doctest: +SKIP
    >>> frames = q.decode(store.get("cut-1")["whisper_mvq"])  # [T, dim] float32  # doctest: +SKIP
    """

    def __init__(self, config: QuantizerConfig, tensors: dict[str, np.ndarray]) -> None:
        self.config = config
        self.tensors = {name: np.ascontiguousarray(tensors[name]) for name in (*TENSORS, DATA_MEAN)}
        _check_shapes(config, self.tensors, "quantizer")
        scale = np.exp(float(self.tensors[CENTERS_SCALE].reshape(())) * config.scale_speed)
        self.codebooks = (self.tensors[CENTERS].astype(np.float64) * scale).astype(np.float32)
        self.fingerprint = fingerprint_of(config, self.tensors)

    # ------------------------------------------------------------ files

    def to_bytes(self) -> bytes:
        """The safetensors file: tensors, config JSON and fingerprint."""
        from safetensors.numpy import save

        metadata = {CONFIG_KEY: _config_json(self.config), FINGERPRINT_KEY: self.fingerprint}
        return bytes(save(self.tensors, metadata=metadata))

    @classmethod
    def load(cls, raw: bytes, where: str, fingerprint: str | None = None) -> Quantizer:
        """Parse a quantiser file; StoreFormatError naming ``where`` if it is not one, was altered, or is not
        ``fingerprint``."""
        metadata = _metadata(raw, where)
        try:
            config = QuantizerConfig.from_dict(json.loads(metadata[CONFIG_KEY]))
            from safetensors.numpy import load

            tensors = load(raw)
        except (KeyError, ValueError, TypeError, ConfigError) as e:
            raise StoreFormatError(f"{where} must be an mt2kd quantiser file (safetensors with {CONFIG_KEY!r} "
                                   f"metadata). Got an unreadable one: {e}") from e
        missing = [n for n in (*TENSORS, DATA_MEAN) if n not in tensors]
        if missing:
            raise StoreFormatError(f"{where} must hold the tensors {[*TENSORS, DATA_MEAN]}. Got no {missing}.")
        _check_shapes(config, tensors, where)
        actual = fingerprint_of(config, tensors)
        if actual != metadata.get(FINGERPRINT_KEY):
            raise StoreFormatError(f"{where}: the quantiser's fingerprint must match its contents. Got "
                                   f"{metadata.get(FINGERPRINT_KEY)!r} recorded, {actual!r} computed: the file "
                                   f"was altered or damaged after it was written.")
        if fingerprint is not None and actual != fingerprint:
            raise StoreFormatError(f"{where} must be the quantiser with fingerprint {fingerprint!r} (the one the "
                                   f"store's codes were made with). Got {actual!r}.")
        return cls(config, tensors)

    # ------------------------------------------------------------ codes

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Frames ``[..., dim]`` (float32) of codes ``[..., num_codebooks]``: one centre per codebook, summed."""
        codes = np.asarray(codes)
        if codes.shape[-1:] != (self.config.num_codebooks,):
            raise ConfigError(f"codes must have {self.config.num_codebooks} columns (one per codebook). "
                              f"Got shape {list(codes.shape)}.")
        flat = codes.reshape(-1, self.config.num_codebooks).astype(np.int64)
        picked = self.codebooks[np.arange(self.config.num_codebooks)[None, :], flat]  # [T, N, dim]
        return picked.sum(axis=1).reshape(*codes.shape[:-1], self.config.dim)

    def relative_error(self, frames: np.ndarray, codes: np.ndarray) -> float:
        """Sum of squared reconstruction errors over that of ``frames`` around the data mean (the package's measure)."""
        x = np.asarray(frames, dtype=np.float64).reshape(-1, self.config.dim)
        error = ((self.decode(codes).reshape(-1, self.config.dim) - x) ** 2).sum()
        spread = ((x - self.tensors[DATA_MEAN].astype(np.float64)) ** 2).sum()
        return float(error / (spread + 1e-20))

    def to_package(self, device: str = "cpu") -> Any:
        """The ``multi_quantization.Quantizer`` with these parameters (torch)."""
        import multi_quantization
        import torch

        quantizer = multi_quantization.Quantizer(self.config.dim, self.config.codebook_size, self.config.num_codebooks)
        quantizer.scale_speed = self.config.scale_speed
        quantizer.load_state_dict({n: torch.from_numpy(self.tensors[n].copy()) for n in TENSORS})
        return quantizer.to(device).eval()

    def encode(self, frames: np.ndarray | torch.Tensor, package_quantizer: Any = None) -> np.ndarray:
        """Codes ``[T, num_codebooks]`` uint8 of frames ``[T, dim]`` (the package's encoder, torch)."""
        import torch

        quantizer = package_quantizer if package_quantizer is not None else self.to_package()
        x = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.asarray(frames, dtype=np.float32))
        with torch.no_grad():
            codes = quantizer.encode(x.float().to(quantizer.centers.device), self.config.refine_iters, as_bytes=True)
        return codes.cpu().numpy().astype(np.uint8, copy=False)

    @classmethod
    def from_package(cls, quantizer: Any, config: QuantizerConfig) -> Quantizer:
        """Keep a trained ``multi_quantization.Quantizer`` (its parameters as float32 numpy arrays)."""
        state = {n: t.detach().cpu().numpy() for n, t in quantizer.state_dict().items() if n in TENSORS}
        state[DATA_MEAN] = quantizer.get_data_mean().detach().cpu().numpy()
        config = dataclasses.replace(config, scale_speed=float(quantizer.scale_speed))
        return cls(config, {n: a if n == "id_buf" else a.astype(np.float32) for n, a in state.items()})


def save_quantizer(store: TeacherStore, teacher: str, quantizer: Quantizer) -> None:
    """Write the quantiser of codes teacher ``teacher`` into ``store`` (its spec names the fingerprint)."""
    expected = store.specs[teacher].config.get("quantizer_fingerprint")
    if expected != quantizer.fingerprint:
        raise ConfigError(f"teacher {teacher!r} of {store.url} records quantiser {expected!r}. Got "
                          f"{quantizer.fingerprint!r} to save.")
    store.loc.write(quantizer_path(teacher), quantizer.to_bytes())


def load_quantizer(store: TeacherStore, teacher: str) -> Quantizer:
    """The quantiser of codes teacher ``teacher`` of ``store``, checked against the fingerprint its spec records.

    Examples
    --------
    >>> q = load_quantizer(TeacherStore.open("codes.zarr"), "whisper_mvq")  # doctest: +SKIP
    """
    spec = store.specs.get(teacher)
    codes = codes_teachers(store)
    if spec is None or teacher not in codes:
        raise ConfigError(f"teacher must be a codes teacher of {store.url}, one of {codes}. Got {teacher!r}.")
    path = str(spec.config.get("quantizer", quantizer_path(teacher)))
    where = f"{store.url}/{path}"
    try:
        raw = store.loc.read(path)
    except FileNotFoundError as e:
        raise StoreFormatError(f"{where} must hold the quantiser of {teacher!r}. Got no such file (the store was "
                               f"interrupted while being made: quantise again with --overwrite).") from e
    return Quantizer.load(raw, where, fingerprint=str(spec.config["quantizer_fingerprint"]))


def codes_teachers(store: Any) -> list[str]:
    """Teachers of ``store`` that hold MVQ codes (their spec names a quantiser)."""
    return [n for n, s in store.specs.items() if s.config.get("quantizer_fingerprint")]


def quantizer_path(teacher: str) -> str:
    """Where a store keeps the quantiser of its codes teacher ``teacher``."""
    return f"{QUANTIZERS_DIR}/{teacher}{SUFFIX}"


def fingerprint_of(config: QuantizerConfig, tensors: dict[str, np.ndarray]) -> str:
    """SHA-256 (hex) of the config JSON and every tensor's name, dtype, shape and little-endian bytes."""
    h = hashlib.sha256(_config_json(config).encode())
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        h.update(f"\0{name}\0{array.dtype.str}\0{list(array.shape)}\0".encode())
        h.update(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    return h.hexdigest()


def _config_json(config: QuantizerConfig) -> str:
    return json.dumps(config.to_dict(), sort_keys=True)


def _metadata(raw: bytes, where: str) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's JSON header (read without loading the tensors)."""
    if len(raw) < HEADER_LENGTH_BYTES:
        raise StoreFormatError(f"{where} must be a safetensors file. Got {len(raw)} bytes.")
    (length,) = struct.unpack("<Q", raw[:HEADER_LENGTH_BYTES])
    if length > min(MAX_HEADER_BYTES, len(raw) - HEADER_LENGTH_BYTES):
        raise StoreFormatError(f"{where} must be a safetensors file. Got a header length of {length} bytes in a "
                               f"file of {len(raw)}.")
    try:
        header = json.loads(raw[HEADER_LENGTH_BYTES:HEADER_LENGTH_BYTES + length])
    except ValueError as e:
        raise StoreFormatError(f"{where} must be a safetensors file. Got a header that is not JSON: {e}") from e
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or CONFIG_KEY not in metadata:
        raise StoreFormatError(f"{where} must be an mt2kd quantiser file. Got no {CONFIG_KEY!r} in its metadata.")
    return metadata


def _check_shapes(config: QuantizerConfig, tensors: dict[str, np.ndarray], where: str) -> None:
    n, k, d = config.num_codebooks, config.codebook_size, config.dim
    expected = {"to_logits.weight": (n * k, d), "to_logits.bias": (n * k,), CENTERS: (n, k, d), "logits_scale": (1,),
                CENTERS_SCALE: (1,), DATA_MEAN: (d,)}
    for name, shape in expected.items():
        found = tensors[name].shape if shape != (1,) else (tensors[name].size,)  # a scale: () or (1,)
        if tuple(found) != shape or tensors[name].dtype != np.float32:
            raise StoreFormatError(f"{where}: tensor {name!r} must be float32 {list(shape)}. Got "
                                   f"{tensors[name].dtype} {list(tensors[name].shape)}.")
