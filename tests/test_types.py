"""The code type-checks: mypy over the files setup.cfg names, whatever the checkout's folder is called."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_mypy_finds_no_errors(tmp_path: Path) -> None:
    # mypy names modules after the folders holding __init__.py, and the checkout's root is the package
    # mt2kd: seen through a link called mt2kd it is checked under its real name, not the folder's
    (tmp_path / "mt2kd").symlink_to(ROOT, target_is_directory=True)
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    files = [f"mt2kd/{f.strip()}" for f in config["mypy"]["files"].split(",")]
    done = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "setup.cfg"), *files],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert done.stdout.startswith("Success: no issues found")
