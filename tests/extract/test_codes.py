"""Extraction straight to MVQ codes (``--teacher whisper=CKPT:mvq=QUANTIZER``): no float frames on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mt2kd.errors import StoreFormatError
from mt2kd.extract import ExtractConfig, TeacherConfig, extract, load_teacher
from mt2kd.extract._codes import read_quantizer
from mt2kd.store import QuantizeConfig, TeacherStore, load_quantizer, quantize
from mt2kd.tests.extract._corpus import DEMO

SPEECH = (str(DEMO / "speech_cuts.jsonl.gz"),)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A float whisper store of the demo speech, its codes (store quantize), and the same codes extracted directly."""
    from mt2kd.extract import make_tiny_checkpoints

    folder = tmp_path_factory.mktemp("codes")
    checkpoint = make_tiny_checkpoints(folder / "teachers", names=("whisper",))["whisper"]
    paths = {"checkpoint": checkpoint, "float": folder / "float.zarr", "codes": folder / "codes.zarr",
             "direct": folder / "direct.zarr"}
    extract(ExtractConfig(cuts=SPEECH, store=str(paths["float"]), teachers=(TeacherConfig("whisper", str(checkpoint)),),
                          workers=1, max_duration=8.0, shard_hours=0.02), progress=False)
    quantize(QuantizeConfig(str(paths["float"]), str(paths["codes"]), num_codebooks=4, train_frames=1500,
                            heldout_frames=150, iters=6, batch_frames=128, refine_iters=2), echo=lambda text: None)
    direct = TeacherConfig("whisper", str(checkpoint), {"mvq": str(paths["codes"])})
    extract(ExtractConfig(cuts=SPEECH, store=str(paths["direct"]), teachers=(direct,), workers=1, max_duration=8.0,
                          shard_hours=0.02), progress=False)
    return paths


def test_extraction_writes_the_codes_store_quantize_writes(stores: dict[str, Path]) -> None:
    codes, direct = TeacherStore.open(stores["codes"]), TeacherStore.open(stores["direct"])
    assert list(direct.specs) == ["whisper_mvq"]
    spec = direct.specs["whisper_mvq"]
    assert (spec.dtype, spec.dim, spec.frame_rate) == ("uint8", 4, 25.0)
    assert direct.verify(complete=True) == []
    assert direct.attrs["random_teachers"] is True
    # the quantiser travels into the new store, checked against the fingerprint its spec records
    assert load_quantizer(direct, "whisper_mvq").fingerprint == load_quantizer(codes, "whisper_mvq").fingerprint
    assert sorted(direct.cut_ids()) == sorted(codes.cut_ids())
    same = total = 0
    for cut_id in codes.cut_ids():
        a, b = codes.get(cut_id)["whisper_mvq"], direct.get(cut_id)["whisper_mvq"]
        assert a.shape == b.shape, cut_id
        same, total = same + int((a == b).sum()), total + a.size
    # store quantize encodes the stored float16 frames, extraction the float32 ones: a rounding may flip a code
    assert same / total > 0.9


def test_a_codes_teacher_encodes_what_its_teacher_emits(stores: dict[str, Path]) -> None:
    teacher = load_teacher("whisper", stores["checkpoint"], mvq=str(stores["codes"]))
    plain = load_teacher("whisper", stores["checkpoint"])
    samples = np.random.default_rng(0).normal(0, 0.1, 24_000).astype(np.float32)
    codes = teacher.extract([samples])[0]
    quantizer = read_quantizer(stores["codes"])
    np.testing.assert_array_equal(codes, quantizer.encode(plain.extract([samples])[0]))
    assert teacher.spec.fingerprint != plain.spec.fingerprint


def test_an_altered_quantizer_file_is_refused(stores: dict[str, Path], tmp_path: Path) -> None:
    raw = bytearray((stores["codes"] / "quantizers" / "whisper_mvq.safetensors").read_bytes())
    raw[-3] ^= 1
    altered = tmp_path / "q.safetensors"
    altered.write_bytes(bytes(raw))
    with pytest.raises(StoreFormatError, match="altered or damaged"):
        load_teacher("whisper", stores["checkpoint"], mvq=str(altered))
