import subprocess
import sys

import pytest

from mt2kd.errors import ConfigError, MT2KDError
from mt2kd.store import TeacherSpec


def test_cli_help_lists_areas():
    out = subprocess.run([sys.executable, "-m", "mt2kd", "--help"], capture_output=True, text=True, check=True)
    assert "mt2kd" in out.stdout


def test_spec_round_trip_and_validation():
    spec = TeacherSpec("whisper", "frames", 2560, frame_rate=25.0, config={"layer": -1})
    assert TeacherSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ConfigError, match="dtype must be one of"):
        TeacherSpec("beats", "clip", 527, dtype="int4")
    with pytest.raises(MT2KDError, match="frame_rate"):
        TeacherSpec("whisper", "frames", 2560)
