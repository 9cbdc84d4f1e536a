"""The configuration of one extraction run: a frozen dataclass the CLI maps onto flag by flag."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any

from mt2kd._typed import check_fields
from mt2kd.errors import ConfigError

SCHEDULERS = ("local", "slurm")  # anything else is a scheduler address (tcp://host:8786)
SCHEDULER_ADDRESS = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s]+:\d+/?")  # scheme, host and port: tls://[::1]:8786
DEVICES = ("cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "fp16")


def _parse_value(text: str) -> Any:
    """``-1`` -> -1, ``true`` -> True, ``0.5`` -> 0.5, anything else stays a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _continues(item: str) -> bool:
    """Whether an item without ``=`` is the next element of a list value (a number: ``layers=3,6``)."""
    return re.fullmatch(r"\s*-?\d+\s*", item) is not None


def _option_items(items: list[str]) -> dict[str, str]:
    """``["layers=3", "6", "stack=2"]`` -> ``{"layers": "3,6", "stack": "2"}``: a number without ``=``
    continues the value before it, so a list option reads as written (``layers=3,6``)."""
    options: dict[str, str] = {}
    key = ""
    for item in items:
        if "=" in item:
            key, _, value = item.partition("=")
            key = key.strip()
            options[key] = value.strip()
        else:
            options[key] += "," + item.strip()
    return options


def _absolute(path: str) -> str:
    """A local path made absolute in this working directory; URLs (``s3://``, ``file://``) and "" stay."""
    return path if not path or "://" in path else os.path.abspath(path)


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    """One teacher of the run: registry name, local checkpoint and its options.

    Examples
    --------
    >>> TeacherConfig.parse("whisper=/ckpt/large-v3.pt:layer=-1,mode=trim")
    TeacherConfig(name='whisper', checkpoint='/ckpt/large-v3.pt', options={'layer': -1, 'mode': 'trim'})
    """

    name: str  # registry name ("whisper", "beats", "ecapa" or a registered one)
    checkpoint: str  # local checkpoint file or folder; nothing is downloaded
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # keyword options of load_teacher

    @classmethod
    def parse(cls, text: str) -> TeacherConfig:
        """Parse ``NAME=CKPT[:key=value,...]`` (the ``--teacher`` flag)."""
        name, sep, rest = text.partition("=")
        if not sep or not name or not rest:
            raise ConfigError(f"--teacher must look like NAME=CHECKPOINT[:key=value,...]. Got {text!r}.")
        checkpoint, options = rest, {}
        head, colon, tail = rest.rpartition(":")
        items = tail.split(",")
        bare = [i.strip() for i in items if "=" not in i and not _continues(i)]
        if colon and head and all(re.fullmatch(r"\s*\w+\s*", i) or "=" in i for i in items) and \
                ("=" not in items[0] or bare) and not os.path.exists(rest):  # e.g. tiny.pt:layer
            bare = bare or [items[0].strip()]
            raise ConfigError(f"--teacher {text}: the options after ':' must be key=value[,key=value...], e.g. "
                              f"{name}={head}:{bare[0]}=VALUE. Got {bare[0]!r} without a value.")
        if colon and head and tail and "=" in items[0] and all("=" in i or _continues(i) for i in items):
            checkpoint = head
            for key, value in _option_items(items).items():
                options[key] = _parse_value(value)
        return cls(name.strip(), checkpoint, options)

    def to_text(self) -> str:
        opts = ",".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in self.options.items())
        return f"{self.name}={self.checkpoint}" + (f":{opts}" if opts else "")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "checkpoint": self.checkpoint, "options": dict(self.options)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TeacherConfig:
        return cls(str(data["name"]), str(data["checkpoint"]), dict(data.get("options", {})))


@dataclasses.dataclass(frozen=True)
class ExtractConfig:
    """Everything an extraction run needs; ``mt2kd extract`` flags map one-to-one onto the fields.

    Examples
    --------
    >>> config = ExtractConfig(cuts=("train.jsonl.gz",), store="labels.zarr",
    ...                        teachers=(TeacherConfig.parse("beats=beats.pt"),))
    >>> ExtractConfig.from_dict(config.to_dict()) == config
    True
    """

    cuts: tuple[str, ...]  # lhotse CutSet manifests (.jsonl / .jsonl.gz), read lazily
    store: str  # teacher store to write (directory or fsspec URL)
    teachers: tuple[TeacherConfig, ...]  # teachers to run, each NAME=CKPT[:options]
    scheduler: str = "local"  # "local" (LocalCluster here), "slurm" (dask-jobqueue) or a scheduler address
    # local: worker processes; slurm: SLURM jobs (one worker per GPU each). None: one per visible GPU for a
    # local run on "cuda", one for "cuda:N", else 2
    workers: int | None = None
    device: str = "cpu"  # "cpu" or "cuda"; each worker uses one device
    max_duration: float = 200.0  # s of audio per teacher batch
    shard_hours: float = 1.0  # at most h of audio per shard, shared out equally (one shard = one task)
    dry_run: bool = False  # print the plan and exit
    overwrite: bool = False  # delete an existing store and start it again (else a rerun resumes it)
    retry_failed: bool = False  # recompute the committed shards that hold recorded failed cuts
    max_failures: int = 100  # stop once more cuts than this have failed (-1: never stop)
    precision: str = "fp32"  # teacher compute precision: "fp32", "bf16" or "fp16"
    decode_threads: int = 2  # background audio decoding threads per worker
    prefetch_cuts: int = 32  # decoded cuts kept ready ahead of the model per worker
    events_log: str = ""  # optional JSON-lines log of shard starts and commits ("" for none)
    slurm_queue: str = ""  # SLURM partition
    slurm_account: str = ""  # SLURM account to charge
    slurm_walltime: str = "04:00:00"  # HH:MM:SS per SLURM job
    slurm_memory: str = "32GB"  # memory per SLURM job
    slurm_cores: int = 8  # CPUs per SLURM job (its workers' torch threads and audio decoding)
    slurm_gpus: int = 1  # GPUs per SLURM job (one dask worker per GPU)
    slurm_job_extra: tuple[str, ...] = ()  # extra #SBATCH directives, e.g. "--constraint=a100"

    def __post_init__(self) -> None:
        if not self.cuts:
            raise ConfigError("cuts must name at least one CutSet manifest. Got none.")
        if not self.store:
            raise ConfigError("store must be a path or URL. Got an empty string.")
        if not self.teachers:
            raise ConfigError("teachers must name at least one teacher. Got none.")
        names = [t.name for t in self.teachers]
        if len(set(names)) != len(names):
            raise ConfigError(f"each teacher may be given once. Got {names}.")
        self._check_numbers()
        if self.device not in DEVICES and not re.fullmatch(r"cuda:\d+", self.device):
            raise ConfigError(f"device must be one of {list(DEVICES)} or cuda:N. Got {self.device!r}.")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {list(PRECISIONS)}. Got {self.precision!r}.")
        if self.scheduler not in SCHEDULERS and not SCHEDULER_ADDRESS.fullmatch(self.scheduler):
            raise ConfigError(f"scheduler must be one of {list(SCHEDULERS)} or a scheduler address with scheme and "
                              f"port, such as tcp://HOST:8786. Got {self.scheduler!r}.")

    def _check_numbers(self) -> None:
        for field, value in (("workers", 1 if self.workers is None else self.workers),
                             ("decode_threads", self.decode_threads),
                             ("prefetch_cuts", self.prefetch_cuts), ("slurm_cores", self.slurm_cores),
                             ("slurm_gpus", self.slurm_gpus)):
            if value < 1:
                raise ConfigError(f"{field} must be >= 1. Got {value}.")
        for field, number in (("max_duration", self.max_duration), ("shard_hours", self.shard_hours)):
            if not number > 0:
                raise ConfigError(f"{field} must be > 0. Got {number}.")
        if self.max_failures < -1:
            raise ConfigError(f"max_failures must be >= 0, or -1 for no limit. Got {self.max_failures}.")

    @property
    def is_local(self) -> bool:
        return self.scheduler == "local"

    def with_absolute_paths(self) -> ExtractConfig:
        """This config with its local paths (manifests, store, events log, checkpoints) made absolute here.

        The workers open the store, the events log and the checkpoints in their own working directory,
        which on a running scheduler or on SLURM is not the client's. URLs are left as they are.
        """
        teachers = tuple(dataclasses.replace(t, checkpoint=_absolute(t.checkpoint)) for t in self.teachers)
        return dataclasses.replace(self, cuts=tuple(_absolute(c) for c in self.cuts), store=_absolute(self.store),
                                   events_log=_absolute(self.events_log), teachers=teachers)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["cuts"] = list(self.cuts)
        data["teachers"] = [t.to_dict() for t in self.teachers]
        data["slurm_job_extra"] = list(self.slurm_job_extra)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExtractConfig:
        check_fields(cls, data, "extract config")
        values = dict(data)
        values["cuts"] = tuple(values.get("cuts", ()))
        values["teachers"] = tuple(t if isinstance(t, TeacherConfig) else
                                   TeacherConfig.parse(t) if isinstance(t, str) else TeacherConfig.from_dict(t)
                                   for t in values.get("teachers", ()))
        values["slurm_job_extra"] = tuple(values.get("slurm_job_extra", ()))
        return cls(**values)
