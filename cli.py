"""The ``mt2kd`` command line: one click group, one subgroup per area.

Subcommands are imported only when invoked, so ``mt2kd store info`` does not
pay for importing torch or whisper.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import types
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

import click

from mt2kd.errors import MT2KDError

F = TypeVar("F", bound=Callable[..., Any])

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


def one_line_errors(command: F) -> F:
    """Every command's wrapper: an mt2kd or file-system error becomes ``Error: Type: message``, exit status 1.

    A vanished shard file, an unwritable output path or a bad config is the
    user's to fix, and its message names what to fix; a traceback would bury
    it. Other exceptions (bugs) keep their traceback.

    Examples
    --------
    >>> @click.command()
    ... @one_line_errors
    ... def info(path: str) -> None: ...
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (MT2KDError, OSError) as e:
            raise click.ClickException(f"{type(e).__name__}: {e}") from e

    return wrapper  # type: ignore[return-value]


def config_options(cls: type, help: Mapping[str, str] | None = None, flags: Mapping[str, Sequence[str]] | None = None,
                   extra: Mapping[str, Mapping[str, Any]] | None = None, skip: Collection[str] = (),
                   negatable: bool = True) -> Callable[[F], F]:
    """One click option per field of the config dataclass ``cls``: how every command gets its flags.

    The flag is the field's name (``max_duration`` -> ``--max-duration``)
    unless ``flags`` names others (the first is the flag, the rest aliases);
    type, default and ``multiple`` come from the field, so no default is
    written twice. A bool field is ``--x/--no-x`` (so a flag can undo a
    config file's true), or with ``negatable=False`` a plain ``--x`` flag;
    a tuple field takes one value per use. ``help`` gives each flag's text, ``extra`` overrides
    click's arguments (``required``, a ``click.Path`` type), ``skip`` leaves
    fields out.

    Examples
    --------
    >>> @click.command()
    ... @config_options(EvalConfig, help={"cuts": "CutSet manifest (repeatable)."})  # doctest: +SKIP
    ... def evaluate(**fields): ...
    """
    hints = typing.get_type_hints(cls)

    def decorate(command: F) -> F:
        for field in reversed(dataclasses.fields(cls)):
            if field.name not in skip:
                names = list((flags or {}).get(field.name) or ["--" + field.name.replace("_", "-")])
                kwargs = {"help": (help or {}).get(field.name), **_field_kwargs(field, hints[field.name]),
                          **(extra or {}).get(field.name, {})}
                if hints[field.name] is bool and negatable:  # --x/--no-x
                    names[0] = f"{names[0]}/--no-{names[0][2:]}"
                elif hints[field.name] is bool:
                    kwargs["is_flag"] = True
                command = click.option(*names, field.name, **kwargs)(command)
        return command

    return decorate


def _field_kwargs(field: dataclasses.Field, hint: Any) -> dict[str, Any]:
    """click's type, default and ``multiple`` for one dataclass field."""
    default = None if field.default is dataclasses.MISSING else field.default
    shown = default not in (None, "", ())
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is tuple:  # tuple[X, ...]: one value per use of the flag
        return {"multiple": True, "type": args[0] if args[0] in (int, float, str) else str}
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None
        hint = args[0]
    if hint is bool:
        return {"default": default, "show_default": default is True}
    return {"type": hint if hint in (int, float, str) else str, "default": default, "show_default": shown}


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
