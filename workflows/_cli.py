"""``mt2kd demo`` (the embedded demo) and ``mt2kd run --config FILE`` (the whole chain)."""

from __future__ import annotations

from pathlib import Path

import click

from mt2kd.errors import MT2KDError

RANDOM_BANNER = ("NOTE: the demo teachers are tiny RANDOM-weight models of the real architectures; "
                 "their outputs show the pipeline working, they are not real teacher labels.")


def _echo(text: str) -> None:
    click.echo(text, err=True)


@click.command()
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="folder for teachers and store")
@click.option("--workers", default=2, show_default=True, help="LocalCluster worker processes")
def demo(out: str, workers: int) -> None:
    """Extract the bundled demo corpus with tiny random teachers, then show and verify the store.

    Example: mt2kd demo --out demo-out
    """
    from mt2kd.store._cli import store as store_cli
    from mt2kd.workflows._config import demo_config, write_demo_manifests
    from mt2kd.workflows._run import run_workflow, with_workers

    config = with_workers(demo_config(out), workers)
    click.echo(RANDOM_BANNER)
    write_demo_manifests(Path(out) / "data")
    try:
        run_workflow(config, echo=_echo)
    except MT2KDError as e:
        raise click.ClickException(f"{type(e).__name__}: {e}") from e
    click.echo("")
    store_cli.main(["info", config.extract.store], standalone_mode=False)
    click.echo("")
    click.echo(f"verify: OK (every demo cut present, frame counts match durations). {RANDOM_BANNER}")


@click.command()
@click.option("--config", "config_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="workflow config (.yaml/.json): extract section, optional tiny_teachers, verify, train, eval")
def run(config_file: str) -> None:
    """Run the chain of one config: prepare -> extract -> verify (-> train -> eval once hooked in)."""
    from mt2kd.workflows._config import WorkflowConfig
    from mt2kd.workflows._run import run_workflow

    try:
        results = run_workflow(WorkflowConfig.load(config_file), echo=_echo)
    except MT2KDError as e:
        raise click.ClickException(f"{type(e).__name__}: {e}") from e
    click.echo(results["extract"].line())
