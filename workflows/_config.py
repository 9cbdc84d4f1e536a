"""One frozen config for the whole chain: prepare -> extract -> verify (-> train -> eval)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from mt2kd.errors import ConfigError
from mt2kd.extract._config import ExtractConfig

DEMO_DIR = Path(__file__).resolve().parent / "demo"  # the committed demo corpus
DEMO_MANIFESTS = ("speech_cuts.jsonl.gz", "events_cuts.jsonl.gz")


@dataclasses.dataclass(frozen=True)
class WorkflowConfig:
    """The chain ``mt2kd run --config FILE`` runs; a YAML or JSON file holds exactly these fields.

    Examples
    --------
    >>> config = WorkflowConfig.load("run.yaml")  # doctest: +SKIP
    >>> config.extract.store
    'labels.zarr'
    """

    extract: ExtractConfig  # the extraction job (cuts, store, teachers, cluster)
    tiny_teachers: str = ""  # prepare: write tiny RANDOM checkpoints into this folder first ("" to skip)
    verify: bool = True  # read the whole store back and check every cut of the manifests is there
    train: dict[str, Any] | None = None  # a TrainConfig as a dict; runs once a train hook is registered
    eval: dict[str, Any] | None = None  # an eval config as a dict; runs once an eval hook is registered

    def to_dict(self) -> dict[str, Any]:
        return {"extract": self.extract.to_dict(), "tiny_teachers": self.tiny_teachers, "verify": self.verify,
                "train": self.train, "eval": self.eval}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkflowConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown workflow config fields {unknown}; expected a subset of {sorted(known)}.")
        if not isinstance(data.get("extract"), dict):
            raise ConfigError(f"a workflow config needs an 'extract' section (a mapping). Got {data.get('extract')!r}.")
        return cls(**{**data, "extract": ExtractConfig.from_dict(data["extract"])})

    @classmethod
    def load(cls, path: str | Path) -> WorkflowConfig:
        """Read a ``.yaml``/``.yml`` or ``.json`` file; relative paths in it stay relative to the working dir."""
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"a workflow config must be .yaml, .yml or .json. Got {path.name!r}.")
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of workflow fields. Got {type(data).__name__}.")
        return cls.from_dict(data)


def demo_config(out: str | Path, workers: int = 2) -> WorkflowConfig:
    """The demo chain: tiny random teachers, the demo corpus, a LocalCluster with ``workers``.

    The cuts are the copies :func:`write_demo_manifests` puts in ``out/data``.
    """
    out = Path(out)
    teachers_dir = out / "teachers"
    teachers = ({"name": "whisper", "checkpoint": str(teachers_dir / "whisper" / "tiny.pt")},
                {"name": "beats", "checkpoint": str(teachers_dir / "beats" / "tiny.pt")},
                {"name": "ecapa", "checkpoint": str(teachers_dir / "ecapa")})
    extract = ExtractConfig.from_dict({
        "cuts": [str(out / "data" / m) for m in DEMO_MANIFESTS], "store": str(out / "store"), "teachers": teachers,
        "workers": workers, "max_duration": 30.0,
        "shard_hours": 0.01,  # about 36 s of audio per shard: the 100 s demo makes 3 shards, shared by the workers
    })
    return WorkflowConfig(extract=extract, tiny_teachers=str(teachers_dir))


def write_demo_manifests(folder: str | Path) -> tuple[str, ...]:
    """Copy the demo manifests into ``folder`` with absolute audio paths; returns their paths.

    The committed manifests name audio relative to their own folder (so the
    corpus works from any checkout); plain lhotse loading, as the trainer and
    eval do, needs absolute paths.

    Examples
    --------
    >>> write_demo_manifests("demo-out/data")  # doctest: +SKIP
    ('demo-out/data/speech_cuts.jsonl.gz', 'demo-out/data/events_cuts.jsonl.gz')
    """
    from lhotse import CutSet

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in DEMO_MANIFESTS:
        cuts = CutSet.from_file(DEMO_DIR / name).with_recording_path_prefix(str(DEMO_DIR))
        cuts.to_file(folder / name)
    return tuple(str(folder / name) for name in DEMO_MANIFESTS)
