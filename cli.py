"""The ``mt2kd`` command line: one click group, one subgroup per area.

Subcommands are imported only when invoked, so ``mt2kd store info`` does not
pay for importing torch or whisper.
"""

from __future__ import annotations

import importlib

import click

# name -> "module:attribute" of a click command or group
_SUBCOMMANDS: dict[str, str] = {
    "store": "mt2kd.store._cli:store",
    "extract": "mt2kd.extract._cli:extract",
    "teachers": "mt2kd.extract._cli:teachers",
    "train": "mt2kd.train._cli:train",
    "eval": "mt2kd.eval._cli:eval_",
    "demo": "mt2kd.workflows._cli:demo",
    "run": "mt2kd.workflows._cli:run",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = _SUBCOMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            return None  # area not built yet
        return getattr(module, attr)


@click.group(cls=_LazyGroup)
@click.version_option(package_name="mt2kd")
def main() -> None:
    """mt2kd: teacher-label extraction and KD training for speech/audio students."""
    from mt2kd._process import skip_final_gc_at_exit

    skip_final_gc_at_exit()  # the process ends with the command
