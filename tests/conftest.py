"""Shared pytest setup: the `slow` opt-in and the `gpu` skip."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_slow = config.getoption("--run-slow")
    has_gpu = None
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: pass --run-slow"))
        if "gpu" in item.keywords:
            if has_gpu is None:
                import torch

                has_gpu = torch.cuda.is_available()
            if not has_gpu:
                item.add_marker(pytest.mark.skip(reason="gpu: no CUDA device"))


def pytest_runtest_setup(item: pytest.Item) -> None:
    _forget_speechbrain_lazy_modules()


def _forget_speechbrain_lazy_modules() -> None:
    # speechbrain puts lazy redirect modules into sys.modules (k2, spacy, flair
    # integrations); any attribute access imports their optional dependency and
    # raises. Tools that walk sys.modules (hypothesis does, before each example)
    # then fail in whichever test runs after the ECAPA tests. Dropping the
    # unloaded redirects only forgets aliases that could not be used anyway.
    import sys

    if "speechbrain" not in sys.modules:
        return
    from speechbrain.utils.importutils import LazyModule

    for name, module in list(sys.modules.items()):
        if isinstance(module, LazyModule) and module.lazy_module is None:
            del sys.modules[name]
