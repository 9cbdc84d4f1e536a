"""``mt2kd train``: stage-1 KD training, stage-2 fine-tuning, checkpoint averaging and the ASR vocabulary (``bpe``).

Every :class:`TrainConfig` field is a flag of ``mt2kd train kd`` (``--lr`` for
``lr``, ``--max-duration`` for ``max_duration``); the list fields take one
value per use: ``--cuts`` (cuts), ``--store`` (stores), ``--repeat``
(repeats). ``mt2kd train finetune`` derives its flags from
:class:`FinetuneConfig` the same way, and those of its nested ASR config with
an ``asr-`` prefix (``--asr-joiner-dim``). Precedence: field default < ``--config FILE`` < flags given on the
command line. torch is imported only when a command runs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import click

from mt2kd.cli import one_line_errors
from mt2kd.errors import ConfigError
from mt2kd.train._config import TrainConfig
from mt2kd.train._finetune_config import FinetuneConfig
from mt2kd.train._targets import parse_target

_LIST_FLAGS = {"cuts": "--cuts", "stores": "--store", "repeats": "--repeat", "targets": "--target"}  # field -> flag
_TARGET_HELP = ("one KD target per use, as key=value pairs of KDTarget fields (docs/training.md), e.g. "
                "--target teacher=whisper_l8,block=2,loss=l1_logsigmoid_cos; none: the paper's three")
_NESTED_SKIP = {"asr": ("vocab_size",)}  # nested fields set by the run itself (the tokenizer's size)
# the names the teacher roles had before train named them as eval does: still accepted as flags
_OLD_FLAGS = {"frames_teacher": ("--whisper-teacher",), "tagging_teacher": ("--beats-teacher",),
              "speaker_teacher": ("--ecapa-teacher",)}


def _option(field: dataclasses.Field, owner: str, prefix: str = "") -> Any:
    """A click option for one config field, typed after its default (``prefix``: a nested config's)."""
    default = field.default
    name = f"{prefix}__{field.name}" if prefix else field.name
    help_text = f"{owner}.{field.name} (default {default!r})."
    if field.name in _LIST_FLAGS and not prefix:
        kind = int if field.name == "repeats" else str
        help_text = _TARGET_HELP if field.name == "targets" else help_text
        return click.option(_LIST_FLAGS[field.name], name, multiple=True, type=kind, help=help_text)
    flag = "--" + (f"{prefix}-" if prefix else "") + field.name.replace("_", "-")
    if isinstance(default, bool):
        return click.option(f"{flag}/--no-{flag[2:]}", name, default=default, help=help_text)
    old = _OLD_FLAGS.get(field.name, ()) if not prefix else ()
    return click.option(flag, *old, name, type=type(default), default=default, help=help_text)


def _fields(cls: type) -> list[tuple[dataclasses.Field, str, str]]:
    """(field, owner name, prefix) of every flag of ``cls``: its own fields and those of nested configs."""
    found = []
    for field in dataclasses.fields(cls):
        if field.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(field.default_factory):
            nested = field.default_factory
            skip = _NESTED_SKIP.get(field.name, ())
            found += [(f, nested.__name__, field.name) for f in dataclasses.fields(nested) if f.name not in skip]
        else:
            found.append((field, cls.__name__, ""))
    return found


def config_options(cls: type) -> Any:
    """Decorator adding one flag per field of the config dataclass ``cls``."""
    def decorate(command: Any) -> Any:
        for field, owner, prefix in reversed(_fields(cls)):
            command = _option(field, owner, prefix)(command)
        return command
    return decorate


def resolve_config(ctx: click.Context, config_file: str | None, values: dict[str, Any], cls: type = TrainConfig) -> Any:
    """Merge defaults, the config file and the flags the user actually typed."""
    merged = cls.from_file(config_file).to_dict() if config_file else cls().to_dict()  # type: ignore[attr-defined]
    for name, value in values.items():
        source = ctx.get_parameter_source(name)
        if source is not None and source.name == "COMMANDLINE":
            if name == "targets":  # --target key=value,... flags replace a file's list
                value = tuple(parse_target(text).to_dict() for text in value)
            value = list(value) if isinstance(value, tuple) else value
            if "__" in name:
                outer, inner = name.split("__", 1)
                merged[outer] = {**merged[outer], inner: value}
            else:
                merged[name] = value
    return cls.from_dict(merged)  # type: ignore[attr-defined]


@click.group()
def train() -> None:
    """Train students from a teacher store."""


@train.command("kd")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="YAML or JSON file holding TrainConfig fields.")
@config_options(TrainConfig)
@click.pass_context
@one_line_errors
def kd(ctx: click.Context, config_file: str | None, **values: Any) -> None:
    """Stage-1 KD: student frames/logits/embeddings towards whisper/beats/ecapa targets.

    Resumes from the latest checkpoint in --exp-dir if there is one. Under
    torchrun (WORLD_SIZE > 1) each process trains one DDP rank.

    Example: mt2kd train kd --cuts a.jsonl.gz --store teachers.zarr --exp-dir exp --student tiny
    """
    try:
        cfg = resolve_config(ctx, config_file, values)
    except ConfigError as e:
        raise click.UsageError(str(e)) from e
    if not cfg.cuts or not cfg.stores:
        raise click.UsageError("at least one --cuts and one --store are needed (flags or --config).")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from mt2kd.train._trainer import train as run_training

    run_training(cfg)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        dist.destroy_process_group()


@train.command("finetune")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="YAML or JSON file holding FinetuneConfig fields (asr: a mapping of AsrConfig fields).")
@config_options(FinetuneConfig)
@click.pass_context
@one_line_errors
def finetune(ctx: click.Context, config_file: str | None, **values: Any) -> None:
    """Stage 2: fine-tune a student on transcripts, event labels and speakers (KD terms as auxiliaries).

    Starts from --init (a stage-1 checkpoint or an averaged model) or from
    scratch; resumes from the latest checkpoint in --exp-dir if there is one.
    Each cut adds the losses it has labels for. See docs/finetuning.md.

    Example: mt2kd train finetune --cuts train.jsonl.gz --init exp/avg.pt --tokenizer bpe --exp-dir exp-ft
    """
    try:
        cfg = resolve_config(ctx, config_file, values, FinetuneConfig)
    except ConfigError as e:
        raise click.UsageError(str(e)) from e
    if not cfg.cuts:
        raise click.UsageError("at least one --cuts is needed (flag or --config).")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from mt2kd.train._finetune import finetune as run_finetune

    run_finetune(cfg)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        dist.destroy_process_group()


@train.command("average")
@click.option("--exp-dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Folder holding checkpoint-*.pt files.")
@click.option("--last", "num_last", type=int, default=5, show_default=True,
              help="Average this many of the latest checkpoints.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="Where to write the averaged checkpoint (loadable with load_student).")
@one_line_errors
def average(exp_dir: str, num_last: int, out_path: str) -> None:
    """Average the model weights of the last N checkpoints into one checkpoint."""
    from mt2kd.train._checkpoint import write_average

    used = write_average(exp_dir, num_last, out_path)
    click.echo(f"averaged {len(used)} checkpoints ({used[0].name} .. {used[-1].name}) -> {out_path}")


@train.command("bpe")
@click.option("--cuts", "cuts", multiple=True, required=True, type=click.Path(exists=True, dir_okay=False),
              help="CutSet manifest whose supervision texts train the model (repeat for several).")
@click.option("--vocab-size", type=int, default=500, show_default=True,
              help="BPE pieces, blank (id 0) and <unk> (id 1) included.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder to write bpe.model and tokens.txt into.")
@one_line_errors
def bpe(cuts: tuple[str, ...], vocab_size: int, out_dir: str) -> None:
    """Train the ASR vocabulary: a sentencepiece BPE model over the cuts' transcripts.

    Example: mt2kd train bpe --cuts train_cuts.jsonl.gz --vocab-size 500 --out data/bpe500
    """
    from mt2kd.train._tokenizer import MODEL_FILE, train_bpe

    tokenizer = train_bpe(cuts, vocab_size, out_dir)
    click.echo(f"BPE model with {tokenizer.vocab_size} pieces -> {os.path.join(out_dir, MODEL_FILE)}")
