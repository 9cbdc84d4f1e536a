"""``mt2kd extract`` (the job) and ``mt2kd teachers`` (tiny checkpoints, checkpoint facts).

Flags map one-to-one onto :class:`ExtractConfig` fields. torch, lhotse and
distributed are imported inside the commands.
"""

from __future__ import annotations

import json
from typing import Any

import click

from mt2kd.cli import config_options, one_line_errors
from mt2kd.extract._config import PRECISIONS, ExtractConfig, TeacherConfig
from mt2kd.extract._tiny import DEFAULT_TINY, TINY_NAMES

_HELP = {
    "cuts": "lhotse CutSet manifest (.jsonl/.jsonl.gz); repeat for several",
    "store": "teacher store to write (directory or fsspec URL)",
    "teachers": "NAME=CHECKPOINT[:key=value,...], e.g. whisper=large-v3.pt:layer=-1,mode=trim; repeat",
    "scheduler": "'local' (LocalCluster here), 'slurm' (dask-jobqueue) or a scheduler address",
    "workers": "local worker processes, or SLURM jobs (one worker per GPU each) [default: one per GPU for a "
               "local run on cuda, else 2]",
    "device": "cpu, cuda (one worker per visible GPU) or cuda:N (that GPU)",
    "max_duration": "s of audio per batch",
    "shard_hours": "h of audio per shard at most (the audio is split into equal shards)",
    "dry_run": "print the plan (cuts, hours, shards, bytes) and exit",
    "overwrite": "delete the existing store and start it again, even one this command would resume (without it "
                 "a rerun resumes the store, and a store made by other teachers or inputs is refused)",
    "retry_failed": "recompute the committed shards that hold failed cuts (e.g. once a missing disk is back)",
    "max_failures": "stop once more cuts than this failed (-1: never)",
    "decode_threads": "audio decoding threads per worker",
    "prefetch_cuts": "decoded cuts kept ready ahead of the model",
    "events_log": "append shard start/commit events to this JSON-lines file",
    "slurm_queue": "SLURM partition",
    "slurm_account": "SLURM account",
    "slurm_cores": "CPUs per job: its workers' torch threads and audio decoding",
    "slurm_gpus": "GPUs per job, one dask worker each (with --device cuda)",
    "slurm_job_extra": "extra #SBATCH directive, e.g. --constraint=a100; repeat",
}
_EXTRA: dict[str, dict[str, Any]] = {"cuts": {"required": True, "type": click.Path(exists=True, dir_okay=False)},
          "store": {"required": True}, "teachers": {"required": True},
          "precision": {"type": click.Choice(list(PRECISIONS))}}


@click.command()
@config_options(ExtractConfig, _HELP, {"teachers": ["--teacher"]}, _EXTRA, negatable=False)
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
@one_line_errors
def extract(as_json: bool, **fields: Any) -> None:
    """Run the teachers over CutSets into a sharded teacher store (resumable).

    Example: mt2kd extract --cuts train.jsonl.gz --store labels.zarr
    --teacher whisper=large-v3.pt --teacher beats=beats.pt --teacher ecapa=ecapa/
    """
    from mt2kd.extract._job import extract as run_extract

    fields["teachers"] = tuple(TeacherConfig.parse(t) for t in fields["teachers"])
    config = ExtractConfig.from_dict(fields)
    summary = run_extract(config, echo=lambda text: click.echo(text, err=True))
    click.echo(json.dumps(summary.to_dict()) if as_json else summary.line())


@click.group()
def teachers() -> None:
    """Teacher checkpoints: write tiny random ones, show what one holds."""


@teachers.command("make-tiny")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True)
@click.option("--teacher", "names", multiple=True, type=click.Choice(list(TINY_NAMES) + ["all"]),
              help=f"teacher to write; repeat [default: {', '.join(DEFAULT_TINY)}]")
@one_line_errors
def make_tiny(out_dir: str, seed: int, names: tuple[str, ...]) -> None:
    """Write tiny RANDOM-weight teacher checkpoints into OUT_DIR (tests and demos only)."""
    from mt2kd.extract._tiny import make_tiny_checkpoints

    chosen = TINY_NAMES if "all" in names else (names or DEFAULT_TINY)
    paths = make_tiny_checkpoints(out_dir, seed=seed, names=tuple(chosen))
    for name, path in paths.items():
        click.echo(f"{name:<8}: {path}")
    click.echo("These teachers have random weights: their outputs are not labels.")


@teachers.command("info")
@click.argument("name")
@click.argument("checkpoint", type=click.Path(exists=True))
@click.option("--option", "options", multiple=True, help="key=value teacher option; repeat")
@one_line_errors
def info(name: str, checkpoint: str, options: tuple[str, ...]) -> None:
    """Load checkpoint CHECKPOINT as teacher NAME and show its spec and fingerprint."""
    from mt2kd.extract._plugin import load_teachers
    from mt2kd.extract._tiny import checkpoint_is_random

    text = f"{name}={checkpoint}" + (":" + ",".join(options) if options else "")
    teacher = load_teachers([TeacherConfig.parse(text)], "fp32", "cpu")[name]
    spec = teacher.spec
    rows = [("Teacher", name), ("Checkpoint", checkpoint), ("Random weights", checkpoint_is_random(checkpoint)),
            ("Kind", spec.kind), ("Dim", spec.dim), ("Frame rate", spec.frame_rate or "-"), ("Dtype", spec.dtype),
            ("Fingerprint", spec.fingerprint), ("Options", json.dumps(teacher.options, default=str))]
    click.echo("\n".join(f"{k:<15}: {v}" for k, v in rows))
