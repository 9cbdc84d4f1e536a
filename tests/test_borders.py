"""The borders between packages: each package is reached through its ``__init__``, and data flows one way.

Imports are read with ``ast`` from every module of the package (tests and
bench scripts excepted: a test may open the module it tests), including
imports inside functions and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("extract", "store", "train", "eval", "workflows")
# which packages each one may import (the foundation modules at the root are open to all)
ALLOWED = {"store": set(), "extract": {"store"}, "train": {"store"}, "eval": {"store", "train"},
           "workflows": {"extract", "store", "train", "eval"}, "": set()}


def _modules() -> Iterator[tuple[str, Path]]:
    """(package, file) of every module: package '' for the foundation modules at the root."""
    for path in sorted(ROOT.glob("*.py")):
        yield "", path
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield package, path


def _imported(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, dotted module) of each import, ``from mt2kd.x import _y`` giving ``mt2kd.x._y`` too."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            yield from ((node.lineno, f"{node.module}.{alias.name}") for alias in node.names
                        if alias.name.startswith("_") and not alias.name.startswith("__"))


def _crossings() -> Iterator[tuple[str, str, str]]:
    """(where, imported package, imported module) of each import of another mt2kd package."""
    for package, path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, module in _imported(tree):
            parts = module.split(".")
            if parts[0] == "mt2kd" and len(parts) > 1 and parts[1] in PACKAGES and parts[1] != package:
                yield f"{path.relative_to(ROOT)}:{line}", parts[1], module


def test_no_module_imports_another_packages_private_module() -> None:
    private = [f"{where} imports {module}" for where, _, module in _crossings()
               if any(part.startswith("_") for part in module.split(".")[2:])]
    assert not private, "import these from the package's __init__ (or move them to the foundation):\n" + "\n".join(
        private)


def test_data_flows_one_way_between_packages() -> None:
    against = [f"{where} imports {module}" for where, package, module in _crossings()
               if package not in ALLOWED[Path(where.split(":")[0]).parts[0] if "/" in where else ""]]
    assert not against, "\n".join(against)


@pytest.mark.parametrize("source", ["from mt2kd.store._fs import open_location", "import mt2kd.train._losses",
                                    "from mt2kd.eval import _report"])
def test_the_border_check_sees_each_form_of_import(source: str) -> None:
    found = [module for _, module in _imported(ast.parse(source))]
    assert any(part.startswith("_") for module in found for part in module.split(".")[2:]), found


CUT_RULES = {"SAMPLE_RATE", "check_manifests", "absolute_path", "iter_cut_dicts", "open_manifest", "load_durations",
             "stored_cut_id", "strip_repeat_suffix"}


def test_the_rules_of_the_cut_are_defined_once_in_the_foundation() -> None:
    elsewhere = []
    for package, path in _modules():
        if path.name == "cuts.py" and not package:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef):
                names = [node.name]
            elif isinstance(node, ast.Assign):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            else:
                continue
            elsewhere += [f"{path.relative_to(ROOT)}:{node.lineno} defines {n}" for n in names if n in CUT_RULES]
    assert not elsewhere, "use mt2kd.cuts:\n" + "\n".join(elsewhere)
