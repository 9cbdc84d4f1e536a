"""``mt2kd extract`` (the job) and ``mt2kd teachers`` (tiny checkpoints, checkpoint facts).

Flags map one-to-one onto :class:`ExtractConfig` fields. torch, lhotse and
distributed are imported inside the commands.
"""

from __future__ import annotations

import json
from typing import Any

import click

from mt2kd.errors import MT2KDError
from mt2kd.extract._config import ExtractConfig, TeacherConfig
from mt2kd.extract._tiny import DEFAULT_TINY, TINY_NAMES

_DEFAULTS = ExtractConfig(cuts=("-",), store="-", teachers=(TeacherConfig("-", "-"),))


@click.command()
@click.option("--cuts", multiple=True, required=True, type=click.Path(exists=True, dir_okay=False),
              help="lhotse CutSet manifest (.jsonl/.jsonl.gz); repeat for several")
@click.option("--store", required=True, help="teacher store to write (directory or fsspec URL)")
@click.option("--teacher", "teachers", multiple=True, required=True,
              help="NAME=CHECKPOINT[:key=value,...], e.g. whisper=large-v3.pt:layer=-1,mode=trim; repeat")
@click.option("--scheduler", default=_DEFAULTS.scheduler, show_default=True,
              help="'local' (LocalCluster here), 'slurm' (dask-jobqueue) or a scheduler address")
@click.option("--workers", type=int, default=None,
              help="local worker processes, or SLURM jobs (one worker per GPU each) [default: one per GPU for a "
                   "local run on cuda, else 2]")
@click.option("--device", default=_DEFAULTS.device, show_default=True,
              help="cpu, cuda (one worker per visible GPU) or cuda:N (that GPU)")
@click.option("--max-duration", default=_DEFAULTS.max_duration, show_default=True, help="s of audio per batch")
@click.option("--shard-hours", default=_DEFAULTS.shard_hours, show_default=True,
              help="h of audio per shard at most (the audio is split into equal shards)")
@click.option("--dry-run", is_flag=True, help="print the plan (cuts, hours, shards, bytes) and exit")
@click.option("--overwrite", is_flag=True,
              help="delete the existing store and start it again, even one this command would resume (without "
                   "it a rerun resumes the store, and a store made by other teachers or inputs is refused)")
@click.option("--retry-failed", is_flag=True,
              help="recompute the committed shards that hold failed cuts (e.g. once a missing disk is back)")
@click.option("--max-failures", default=_DEFAULTS.max_failures, show_default=True,
              help="stop once more cuts than this failed (-1: never)")
@click.option("--precision", default=_DEFAULTS.precision, show_default=True,
              type=click.Choice(["fp32", "bf16", "fp16"]))
@click.option("--decode-threads", default=_DEFAULTS.decode_threads, show_default=True,
              help="audio decoding threads per worker")
@click.option("--prefetch-cuts", default=_DEFAULTS.prefetch_cuts, show_default=True,
              help="decoded cuts kept ready ahead of the model")
@click.option("--events-log", default="", help="append shard start/commit events to this JSON-lines file")
@click.option("--slurm-queue", default="", help="SLURM partition")
@click.option("--slurm-account", default="", help="SLURM account")
@click.option("--slurm-walltime", default=_DEFAULTS.slurm_walltime, show_default=True)
@click.option("--slurm-memory", default=_DEFAULTS.slurm_memory, show_default=True)
@click.option("--slurm-cores", default=_DEFAULTS.slurm_cores, show_default=True,
              help="CPUs per job: its workers' torch threads and audio decoding")
@click.option("--slurm-gpus", default=_DEFAULTS.slurm_gpus, show_default=True,
              help="GPUs per job, one dask worker each (with --device cuda)")
@click.option("--slurm-job-extra", multiple=True, help="extra #SBATCH directive, e.g. --constraint=a100; repeat")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def extract(as_json: bool, **fields: Any) -> None:
    """Run the teachers over CutSets into a sharded teacher store (resumable).

    Example: mt2kd extract --cuts train.jsonl.gz --store labels.zarr
    --teacher whisper=large-v3.pt --teacher beats=beats.pt --teacher ecapa=ecapa/
    """
    from mt2kd.extract._job import extract as run_extract

    try:
        fields["teachers"] = tuple(TeacherConfig.parse(t) for t in fields["teachers"])
        config = ExtractConfig.from_dict(fields)
        summary = run_extract(config, echo=lambda text: click.echo(text, err=True))
    except MT2KDError as e:
        raise click.ClickException(f"{type(e).__name__}: {e}") from e
    click.echo(json.dumps(summary.to_dict()) if as_json else summary.line())


@click.group()
def teachers() -> None:
    """Teacher checkpoints: write tiny random ones, show what one holds."""


@teachers.command("make-tiny")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True)
@click.option("--teacher", "names", multiple=True, type=click.Choice(list(TINY_NAMES) + ["all"]),
              help=f"teacher to write; repeat [default: {', '.join(DEFAULT_TINY)}]")
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
def info(name: str, checkpoint: str, options: tuple[str, ...]) -> None:
    """Load checkpoint CHECKPOINT as teacher NAME and show its spec and fingerprint."""
    from mt2kd.extract._plugin import load_teachers
    from mt2kd.extract._tiny import checkpoint_is_random

    text = f"{name}={checkpoint}" + (":" + ",".join(options) if options else "")
    try:
        teacher = load_teachers([TeacherConfig.parse(text)], "fp32", "cpu")[name]
    except MT2KDError as e:
        raise click.ClickException(f"{type(e).__name__}: {e}") from e
    spec = teacher.spec
    rows = [("Teacher", name), ("Checkpoint", checkpoint), ("Random weights", checkpoint_is_random(checkpoint)),
            ("Kind", spec.kind), ("Dim", spec.dim), ("Frame rate", spec.frame_rate or "-"), ("Dtype", spec.dtype),
            ("Fingerprint", spec.fingerprint), ("Options", json.dumps(teacher.options, default=str))]
    click.echo("\n".join(f"{k:<15}: {v}" for k, v in rows))
