"""The one interface every frozen teacher implements, and the registry."""

from __future__ import annotations

import abc
import contextlib
import difflib
import hashlib
import inspect
import json
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mt2kd.errors import CheckpointError, CheckpointNotFoundError, ConfigError
from mt2kd.store import TeacherSpec

FORMAT_VERSION = 1  # bump when a teacher's output for the same weights changes
PRECISIONS = ("fp32", "bf16", "fp16")
CODES_SUFFIX = "_mvq"  # a teacher run with mvq=QUANTIZER stores codes as "<name>_mvq" (extract/_codes.py)


class Teacher(abc.ABC):
    """A frozen teacher: padded 16 kHz waveforms in, one array per cut out.

    Subclasses set ``name`` and implement :meth:`spec` inputs and
    :meth:`_extract`. ``extract`` must give each cut the output it would get
    alone (batch invariance).
    """

    name: str = ""

    def __init__(self, checkpoint: str | Path, options: dict[str, Any], precision: str = "fp32") -> None:
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {list(PRECISIONS)}. Got {precision!r}.")
        self.checkpoint = Path(checkpoint)
        self.options = dict(options)
        self.precision = precision
        self.device = "cpu"
        self._fingerprint: str | None = None

    # -- what the store records -------------------------------------------
    @property
    @abc.abstractmethod
    def spec(self) -> TeacherSpec:
        """The store spec of this teacher's output (fingerprint and config filled in)."""

    @property
    def fingerprint(self) -> str:
        """Hash of checkpoint bytes + options + format version (16 hex digits)."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            # precision changes the numbers (bf16 vs fp32), so it is part of the identity
            h.update(f"{self.name}:{FORMAT_VERSION}:{self.precision}:".encode())
            h.update(json.dumps(self.options, sort_keys=True, default=str).encode())
            h.update(checkpoint_digest(self.checkpoint).encode())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    # -- running -------------------------------------------------------------
    def to(self, device: str) -> Teacher:
        """Move the frozen weights to ``device`` ("cpu", "cuda", "cuda:1")."""
        self._to(device)
        self.device = device
        return self

    def extract(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run the teacher on 16 kHz mono float32 waveforms; one float32 array per input."""
        for i, w in enumerate(waveforms):
            if w.ndim != 1:
                raise ConfigError(f"{self.name}: waveform {i} must be 1-D mono. Got shape {w.shape}.")
        if not waveforms:
            return []
        return self._extract(waveforms)

    def _check_precision(self, device: str) -> None:
        # refused rather than silently run in fp32: the store would record a precision it did not get
        if self.precision != "fp32" and not device.startswith("cuda"):
            raise ConfigError(f"{self.name}: precision {self.precision!r} needs a CUDA device (autocast). "
                              f"Got device {device!r}; use precision 'fp32' on CPU.")

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The autocast context of this teacher's precision (none for fp32), on its device."""
        import torch  # here: the registry and the CLI load this module without torch

        self._check_precision(self.device)
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)

    @abc.abstractmethod
    def _to(self, device: str) -> None: ...

    @abc.abstractmethod
    def _extract(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]: ...


_DIGESTS: dict[tuple[tuple[str, int, int], ...], str] = {}  # checkpoint files (path, size, mtime) -> digest
_DIGESTS_LOCK = threading.Lock()


def checkpoint_digest(checkpoint: str | Path) -> str:
    """SHA-256 of a checkpoint's files (names and bytes), computed once per process while they are unchanged.

    Reading and hashing large-v3 takes about 1.5 s; a dask worker starts it
    on a thread before loading its teachers (``TeacherPlugin``), so the
    fingerprints the run asks for are ready when the loading is done.
    """
    files = sorted(_checkpoint_files(Path(checkpoint)))
    key = tuple((str(p.resolve()), st.st_size, st.st_mtime_ns) for p in files for st in [p.stat()])
    with _DIGESTS_LOCK:
        if key in _DIGESTS:
            return _DIGESTS[key]
    h = hashlib.sha256()
    for path in files:
        h.update(path.name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)  # hashlib lets other threads run meanwhile (blocks over 2 KiB)
    with _DIGESTS_LOCK:
        return _DIGESTS.setdefault(key, h.hexdigest())


def _checkpoint_files(checkpoint: Path) -> list[Path]:
    if checkpoint.is_dir():
        return [p for p in checkpoint.rglob("*") if p.is_file()]
    return [checkpoint]


_REGISTRY: dict[str, Callable[..., Teacher]] = {}


def register_teacher(name: str) -> Callable[[Callable[..., Teacher]], Callable[..., Teacher]]:
    """Class decorator: make a teacher loadable by ``load_teacher(name, ...)``."""

    def wrap(factory: Callable[..., Teacher]) -> Callable[..., Teacher]:
        _REGISTRY[name] = factory
        return factory

    return wrap


def load_teacher(name: str, checkpoint: str | Path, **options: Any) -> Teacher:
    """Load a frozen teacher from a local checkpoint.

    Examples
    --------
    >>> t = load_teacher("whisper", "large-v3.pt", layer=-1, mode="trim")
    >>> frames = t.extract([np.zeros(16_000, np.float32)])[0]   # [25, 2560]
    """
    check_teacher_name(name)
    _import_builtin_teacher(name)
    check_checkpoint(name, checkpoint)
    quantizer = options.pop("mvq", None)  # any frames teacher: store MVQ codes of its frames (extract/_codes.py)
    check_options(name, _REGISTRY[name], options)
    teacher = _REGISTRY[name](checkpoint, **options)
    if quantizer is None:
        return teacher
    from mt2kd.extract._codes import CodesTeacher

    return CodesTeacher(teacher, str(quantizer))


def store_name(name: str, options: dict[str, Any]) -> str:
    """The store teacher name of teacher ``name`` loaded with ``options``: ``whisper_mvq`` with an ``mvq`` option."""
    return f"{name}{CODES_SUFFIX}" if options.get("mvq") is not None else name


_SIMPLE_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def check_options(name: str, factory: Callable[..., Teacher], options: dict[str, Any]) -> None:
    """Options of teacher ``name`` must be keyword parameters of its loader, of their annotated types.

    Annotations of ``int``, ``float``, ``str`` and ``bool`` (alone or in a union) are checked; others, and
    the options of a loader taking ``**kwargs``, are left to the loader.
    """
    params = {k: p for k, p in inspect.signature(factory).parameters.items()
              if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    params.pop(next(iter(params), ""), None)  # the checkpoint
    takes_any = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(factory).parameters.values())
    described = {k: _annotation(p) for k, p in params.items()}
    for key, value in options.items():
        if key not in params:
            if takes_any:
                continue
            close = difflib.get_close_matches(key, list(params), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            known = ", ".join(f"{k} ({described[k] or 'any'})" for k in params)
            raise ConfigError(f"{name} teacher options must be among {known}. Got unknown option {key!r}{hint}.")
        types = [_SIMPLE_TYPES[t] for t in described[key].split(" | ") if t in _SIMPLE_TYPES]
        if types and len(types) == len(described[key].split(" | ")) and not _is_instance(value, types):
            raise ConfigError(f"{name} teacher option {key!r} must be {described[key]}. Got {value!r} "
                              f"({type(value).__name__}).")


def _annotation(param: inspect.Parameter) -> str:
    """The annotation as written (``from __future__ import annotations`` keeps it a string)."""
    if param.annotation is inspect.Parameter.empty:
        return ""
    return param.annotation if isinstance(param.annotation, str) else getattr(param.annotation, "__name__", "")


def _is_instance(value: Any, types: list[type]) -> bool:
    if isinstance(value, bool):  # a bool is an int to Python, never to an option
        return bool in types
    return isinstance(value, tuple(types)) or (float in types and isinstance(value, int))


def check_checkpoint(name: str, checkpoint: str | Path) -> None:
    """A teacher's checkpoint must be there, a file or a folder as its loader reads it: nothing is downloaded.

    Checked on the client before any worker starts (each worker would
    otherwise fail its setup with a traceback of its own).
    """
    path = Path(checkpoint)
    if not path.exists():
        raise CheckpointNotFoundError(
            f"{name} checkpoint {str(checkpoint)!r} does not exist; nothing is downloaded at run time: "
            f"put the checkpoint there or pass its local path."
        )
    kind = _CHECKPOINT_KINDS.get(name)
    if kind == "file-or-hf" and path.is_dir() and not (path / "config.json").is_file():
        pts = sorted(p.name for p in path.glob("*.pt"))
        inside = f" (it holds {', '.join(pts[:3])}: pass one of those)" if pts else ""
        raise CheckpointError(f"{name} checkpoint must be a .pt file or a Hugging Face folder (config.json + "
                              f"model.safetensors). Got {str(checkpoint)!r}, which is a folder without "
                              f"config.json{inside}.")
    if kind == "file" and path.is_dir():
        pts = sorted(p.name for p in path.glob("*.pt"))
        inside = f" (it holds {', '.join(pts[:3])}: pass one of those)" if pts else ""
        raise CheckpointError(f"{name} checkpoint must be a .pt file. Got {str(checkpoint)!r}, which is a "
                              f"folder{inside}.")
    if kind == "folder" and not path.is_dir():  # the folder the loader looks for is not there
        raise CheckpointNotFoundError(f"{name} checkpoint must be a speechbrain pretrained folder. "
                                      f"Got {str(checkpoint)!r}, which is a file: pass the folder that holds it.")


# what each built-in loader reads
_CHECKPOINT_KINDS = {"whisper": "file-or-hf", "beats": "file", "ecapa": "folder", "whisper-text": "file"}


def check_teacher_name(name: str) -> None:
    """``name`` must be a built-in or registered teacher; checked without importing any teacher's module."""
    if name not in _BUILTIN_MODULES and name not in _REGISTRY:
        raise ConfigError(f"teacher must be one of {teacher_names()}. Got {name!r}.")


def teacher_names() -> list[str]:
    """Names ``load_teacher`` accepts: the built-in teachers and any registered ones."""
    return sorted(set(_BUILTIN_MODULES) | set(_REGISTRY))


# Built-in teachers are imported on first use, one at a time, so that loading
# one never pays for (or fails on) the imports of another.
_BUILTIN_MODULES = {
    "whisper": "mt2kd.extract.whisper",
    "beats": "mt2kd.extract.beats",
    "ecapa": "mt2kd.extract.ecapa",
    "hubert": "mt2kd.extract.ssl",
    "wavlm": "mt2kd.extract.ssl",
    "wav2vec2": "mt2kd.extract.ssl",
    "whisper-text": "mt2kd.extract.whisper_text",
}
# and the libraries each imports only once a checkpoint is loaded
_BUILTIN_LAZY_IMPORTS = {
    "whisper": ("whisper.model",),
    "ecapa": ("speechbrain.lobes.features", "speechbrain.lobes.models.ECAPA_TDNN", "speechbrain.processing.features"),
    **{name: ("torchaudio.models",) for name in ("hubert", "wavlm", "wav2vec2")},
    "whisper-text": ("whisper",),
}


def teacher_imports(names: Sequence[str]) -> list[str]:
    """The modules a process imports to load the built-in teachers ``names`` (others are skipped).

    Nothing is imported here: a LocalCluster's fork server imports these
    once, so that its workers start with them (``_cluster.start_fork_server``).

    Examples
    --------
    >>> teacher_imports(["beats"])
    ['mt2kd.extract.beats']
    """
    return [module for name in names if name in _BUILTIN_MODULES
            for module in (_BUILTIN_MODULES[name], *_BUILTIN_LAZY_IMPORTS.get(name, ()))]


def _import_builtin_teacher(name: str) -> None:
    import importlib

    if name in _REGISTRY or name not in _BUILTIN_MODULES:
        return
    importlib.import_module(_BUILTIN_MODULES[name])
