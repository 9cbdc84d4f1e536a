"""The processes mt2kd owns skip the last garbage collection at exit."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import atexit, gc
before = atexit._ncallbacks()
from mt2kd._process import skip_final_gc_at_exit
skip_final_gc_at_exit()
skip_final_gc_at_exit()
frozen = gc.get_freeze_count()  # not always 0 at start: some interpreters freeze objects of their own
print(atexit._ncallbacks() - before)
atexit._run_exitfuncs()
print(gc.get_freeze_count() > frozen)
"""


def test_registered_once_and_freezes_the_heap_at_exit() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.split() == ["1", "True"]


def test_the_command_line_registers_it() -> None:
    script = ("from click.testing import CliRunner; from mt2kd import _process; from mt2kd.cli import main; "
              "print(_process._registered); CliRunner().invoke(main, ['store', 'info', '--help']); "
              "print(_process._registered)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.split() == ["False", "True"]
