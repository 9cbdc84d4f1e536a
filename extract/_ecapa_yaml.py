"""Read the numbers out of a speechbrain ``hyperparams.yaml`` without building anything.

speechbrain's loader (HyperPyYAML) imports and instantiates every ``!new:``
class and may run ``!apply:`` calls. We only need a few sizes, so the file is
parsed with a safe YAML loader that keeps each tagged node as a plain
``(tag, arguments)`` record, and ``!ref <key>`` references are resolved by
looking the key up, never by evaluating anything.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from mt2kd.errors import CheckpointError, CheckpointNotFoundError

__all__ = ["HYPERPARAMS_FILE", "read_hyperparams", "parse_hyperparams"]

HYPERPARAMS_FILE = "hyperparams.yaml"
FBANK_CLASS = "speechbrain.lobes.features.Fbank"
NORM_CLASS = "speechbrain.processing.features.InputNormalization"
ECAPA_CLASS = "speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN"
ACTIVATION_PREFIX = "torch.nn."

# yaml argument -> EcapaConfig field, per module; anything else must keep speechbrain's default
FBANK_FIELDS = {"sample_rate": "sample_rate", "n_mels": "n_mels", "n_fft": "n_fft", "win_length": "win_length",
                "hop_length": "hop_length", "f_min": "f_min", "f_max": "f_max"}
FBANK_DEFAULTS = {"deltas": False, "context": False, "requires_grad": False, "filter_shape": "triangular",
                  "param_change_factor": 1.0, "param_rand_factor": 0.0, "left_frames": 5, "right_frames": 5}
ECAPA_FIELDS = {"lin_neurons": "lin_neurons", "channels": "channels", "kernel_sizes": "kernel_sizes",
                "dilations": "dilations", "attention_channels": "attention_channels",
                "res2net_scale": "res2net_scale", "se_channels": "se_channels",
                "global_context": "global_context", "groups": "groups", "activation": "activation"}
ECAPA_DEFAULTS = {"device": "cpu", "dropout": 0.0}
REFERENCE = re.compile(r"<([^>]*)>")


class Tagged(NamedTuple):
    """A ``!new:``/``!name:``/``!apply:`` node kept as data: the tag and its arguments."""

    tag: str
    args: Any


class Ref(str):
    """The text of a ``!ref`` node, resolved after the whole file is read."""


class _Loader(yaml.SafeLoader):
    """Safe YAML that keeps HyperPyYAML tags as records instead of building objects."""


def _construct_tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Tagged:
    prefix = node.tag[: len(node.tag) - len(suffix)]
    if isinstance(node, yaml.MappingNode):
        args: Any = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        args = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_scalar(node)  # type: ignore[arg-type]
        args = {} if value == "" else value
    return Tagged(prefix + suffix, args)


def _refuse_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    raise yaml.constructor.ConstructorError(None, None, f"unsupported tag {node.tag!r}", node.start_mark)


for _prefix in ("!new:", "!name:", "!apply:"):
    _Loader.add_multi_constructor(_prefix, _construct_tagged)
_Loader.add_constructor("!ref", lambda loader, node: Ref(loader.construct_scalar(node)))  # type: ignore[arg-type]
_Loader.add_multi_constructor("!", _refuse_tag)  # registered last: only tags not matched above


def _deref(key: str, tree: dict[str, Any], path: Path) -> Any:
    branch: Any = tree
    for part in key.replace("]", "").split("["):
        if not isinstance(branch, dict) or part not in branch:
            raise CheckpointError(f"{str(path)!r}: !ref <{key}> must name an entry of the file. Got no {part!r}.")
        branch = branch[part]
    return branch


def _resolve(value: Any, tree: dict[str, Any], path: Path, depth: int = 0) -> Any:
    """Replace ``!ref`` text by what it names (whole match keeps the type; otherwise string substitution)."""
    if depth > 20:
        raise CheckpointError(f"{str(path)!r}: !ref chains must end. Got a cycle at {value!r}.")
    if isinstance(value, Ref):
        whole = REFERENCE.fullmatch(value)
        if whole:
            return _resolve(_deref(whole.group(1), tree, path), tree, path, depth + 1)
        return REFERENCE.sub(lambda m: str(_resolve(_deref(m.group(1), tree, path), tree, path, depth + 1)), value)
    if isinstance(value, Tagged):
        return Tagged(value.tag, _resolve(value.args, tree, path, depth))
    if isinstance(value, dict):
        return {k: _resolve(v, tree, path, depth) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, tree, path, depth) for v in value]
    return value


def _module_args(tree: dict[str, Any], key: str, cls: str, path: Path) -> dict[str, Any]:
    node = _resolve(tree.get(key), tree, path)
    if not isinstance(node, Tagged) or node.tag != f"!new:{cls}":
        got = node.tag if isinstance(node, Tagged) else type(node).__name__
        raise CheckpointError(f"{str(path)!r}: {key!r} must be '!new:{cls}'. Got {got!r}.")
    if not isinstance(node.args, dict):
        raise CheckpointError(f"{str(path)!r}: {key!r} must have keyword arguments. Got {node.args!r}.")
    return node.args


def _pick(args: dict[str, Any], fields: dict[str, str], defaults: dict[str, Any], key: str,
          path: Path) -> dict[str, Any]:
    picked = {}
    for name, value in args.items():
        if name in fields:
            picked[fields[name]] = value
        elif name in defaults and value == defaults[name]:
            continue
        else:
            raise CheckpointError(f"{str(path)!r}: {key}.{name} is not supported; expected one of "
                                  f"{sorted(fields)} or {defaults}. Got {value!r}.")
    return picked


def _activation(value: Any, path: Path) -> str:
    if isinstance(value, Tagged) and value.tag.startswith("!name:" + ACTIVATION_PREFIX):
        return value.tag[len("!name:" + ACTIVATION_PREFIX):]
    raise CheckpointError(f"{str(path)!r}: embedding_model.activation must be '!name:torch.nn.<Class>'. "
                          f"Got {value!r}.")


def parse_hyperparams(text: str, path: Path) -> dict[str, Any]:
    """The EcapaConfig fields set by a hyperparams text (``path`` only names the file in errors)."""
    try:
        tree = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader subclass
    except yaml.YAMLError as e:
        raise CheckpointError(f"{str(path)!r} must be speechbrain hyperparams YAML. Got {e}") from e
    if not isinstance(tree, dict):
        raise CheckpointError(f"{str(path)!r} must be a YAML mapping. Got {type(tree).__name__}.")
    fbank = _pick(_module_args(tree, "compute_features", FBANK_CLASS, path), FBANK_FIELDS, FBANK_DEFAULTS,
                  "compute_features", path)
    norm = _module_args(tree, "mean_var_norm", NORM_CLASS, path)
    if norm.get("norm_type") != "sentence" or not set(norm) <= {"norm_type", "std_norm"}:
        raise CheckpointError(f"{str(path)!r}: mean_var_norm must be sentence normalisation "
                              f"(norm_type: sentence, std_norm: bool). Got {norm!r}.")
    ecapa_args = dict(_module_args(tree, "embedding_model", ECAPA_CLASS, path))
    if ecapa_args.pop("input_size", fbank.get("n_mels", 40)) != fbank.get("n_mels", 40):
        raise CheckpointError(f"{str(path)!r}: embedding_model.input_size must equal compute_features.n_mels.")
    ecapa = _pick(ecapa_args, ECAPA_FIELDS, ECAPA_DEFAULTS, "embedding_model", path)
    if "activation" in ecapa:
        ecapa["activation"] = _activation(ecapa["activation"], path)
    return {**fbank, "std_norm": bool(norm.get("std_norm", True)), **ecapa}


def read_hyperparams(path: str | Path) -> dict[str, Any]:
    """Read ``hyperparams.yaml``: the EcapaConfig fields it sets (sizes only; nothing is built or fetched)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"ECAPA {str(path)!r} must exist: a speechbrain pretrained folder has "
                                      f"{HYPERPARAMS_FILE} next to its checkpoints. Got no such file.")
    return parse_hyperparams(path.read_text(encoding="utf-8"), path)
