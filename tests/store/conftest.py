"""Store fixtures: every contract test runs on a local folder and on fsspec's memory file system."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mt2kd.store import TeacherSpec

FRAME_RATE = 25.0  # Hz, stacked whisper frames
FRAMES_DIM = 16  # small whisper-like frames
LOGITS_DIM = 11  # small beats-like clip logits
EMBEDDING_DIM = 6  # small ecapa-like embedding


def make_specs(frames_dtype: str = "float16") -> list[TeacherSpec]:
    return [
        TeacherSpec("whisper", "frames", FRAMES_DIM, frame_rate=FRAME_RATE, dtype=frames_dtype),
        TeacherSpec("beats", "clip", LOGITS_DIM),
        TeacherSpec("ecapa", "clip", EMBEDDING_DIM),
    ]


def make_outputs(cut_ids: list[str], seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Random float32 outputs of every teacher for ``cut_ids`` (1-80 frames each)."""
    rng = np.random.default_rng(seed)
    return {
        cut_id: {
            "whisper": rng.standard_normal((int(rng.integers(1, 80)), FRAMES_DIM)).astype(np.float32),
            "beats": (rng.standard_normal(LOGITS_DIM) * 3 - 2).astype(np.float32),
            "ecapa": rng.standard_normal(EMBEDDING_DIM).astype(np.float32),
        }
        for cut_id in cut_ids
    }


@pytest.fixture(params=["local", "memory"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, not yet existing store location of each backend."""
    if request.param == "local":
        yield str(tmp_path / "store.zarr")
        return
    import fsspec

    name = f"mt2kd-test-{uuid.uuid4().hex}"
    yield f"memory://{name}"
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/{name}"):
        fs.rm(f"/{name}", recursive=True)


@pytest.fixture
def specs_of() -> object:
    """``specs_of(frames_dtype)``: the three small teacher specs."""
    return make_specs


@pytest.fixture
def outputs_of() -> object:
    """``outputs_of(cut_ids, seed)``: random outputs of every teacher for those cuts."""
    return make_outputs
