"""BEATs teacher against the reference vectors of the released implementation.

The reference folder (shared/reference/beats, a sibling of the repository,
or wherever ``MT2KD_BEATS_REFERENCE`` points) holds a tiny checkpoint in the
released format, two clips, and every intermediate array of the released
code; its README gives the tolerances.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mt2kd.errors import CheckpointError, CheckpointNotFoundError, ConfigError, ValidationError
from mt2kd.extract import load_teacher
from mt2kd.extract._beats_fbank import beats_fbank, num_frames
from mt2kd.extract._beats_model import BeatsConfig, BeatsModel, relative_position_buckets
from mt2kd.extract.beats import (
    TINY_CFG,
    BeatsTeacher,
    load_beats_model,
    min_num_samples,
    write_tiny_beats_checkpoint,
)

REFERENCE = Path(os.environ.get("MT2KD_BEATS_REFERENCE")
                 or Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "beats")
needs_reference = pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"reference vectors not found at {REFERENCE} "
                                     f"(set MT2KD_BEATS_REFERENCE to their folder)")

FEATURE_TOL = 1e-4  # README: encoder features from the waveform
FED_FBANK_TOL = 2e-5  # README: encoder features when fed the reference fbank
LOGITS_TOL = 2e-5
PROBS_TOL = 1e-5
FBANK_MAX_TOL, FBANK_MEAN_TOL = 2e-4, 1e-5
FEATURES = ("patch_embed_ln", "encoder_input", "layer_input_0", "layer_out_0", "encoder_out")


def max_abs(a: torch.Tensor | np.ndarray, b: np.ndarray) -> float:
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.float64) - b).max())


@pytest.fixture(scope="module")
def inputs() -> dict[str, np.ndarray]:
    with np.load(REFERENCE / "inputs.npz") as data:
        return dict(data)


@pytest.fixture(scope="module")
def ref_batched() -> dict[str, np.ndarray]:
    with np.load(REFERENCE / "ref_batched.npz") as data, np.load(REFERENCE / "ref_batched_patch_embed_ln.npz") as ln:
        return {**data, **ln}


def ref_single(i: int) -> dict[str, np.ndarray]:
    with np.load(REFERENCE / f"ref_single_{i}.npz") as data:
        return dict(data)


def clip(inputs: dict[str, np.ndarray], i: int) -> np.ndarray:
    return inputs["batch_waveforms"][i, : inputs["lengths"][i]]


@pytest.fixture(scope="module")
def model() -> BeatsModel:
    return load_beats_model(REFERENCE / "beats_tiny.pt")[0]


@pytest.fixture(scope="module")
def teacher() -> BeatsTeacher:
    loaded = load_teacher("beats", REFERENCE / "beats_tiny.pt", precision="fp32")
    assert isinstance(loaded, BeatsTeacher)
    return loaded


def run(model: BeatsModel, fbank: torch.Tensor, frames: list[int]) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return model(fbank, torch.tensor(frames))


# -- fbank -------------------------------------------------------------------
@needs_reference
def test_fbank_of_whole_batch_matches_reference(inputs, ref_batched):
    ours = beats_fbank(torch.from_numpy(inputs["batch_waveforms"])).numpy()
    error = np.abs(ours.astype(np.float64) - ref_batched["fbank"])
    assert ours.shape == ref_batched["fbank"].shape
    assert error.max() <= FBANK_MAX_TOL and error.mean() < FBANK_MEAN_TOL, (error.max(), error.mean())


@needs_reference
@pytest.mark.parametrize("i", [0, 1])
def test_fbank_of_clip_alone_equals_its_batch_rows(inputs, ref_batched, i):
    alone = beats_fbank(torch.from_numpy(clip(inputs, i))[None])[0]
    batched = beats_fbank(torch.from_numpy(inputs["batch_waveforms"]))[i]
    assert alone.shape[0] == num_frames(int(inputs["lengths"][i])) == int(ref_single(i)["num_frames"])
    assert torch.equal(alone, batched[: alone.shape[0]])
    assert max_abs(alone, ref_batched["fbank"][i, : alone.shape[0]]) <= FBANK_MAX_TOL


def test_fbank_agrees_with_torchaudio_kaldi_fbank():
    # The released preprocessing calls torchaudio's Kaldi fbank; it imports in the pinned pair here.
    kaldi = pytest.importorskip("torchaudio.compliance.kaldi")
    waveform = torch.from_numpy((0.3 * np.random.default_rng(7).standard_normal(12_345)).astype(np.float32))
    theirs = kaldi.fbank(waveform[None] * 2**15, num_mel_bins=128, sample_frequency=16_000,
                         frame_length=25, frame_shift=10)
    ours = beats_fbank(waveform[None])[0] * (2 * 6.55582) + 15.41663
    assert ours.shape == theirs.shape == (num_frames(12_345), 128)
    assert float((ours - theirs).abs().max()) <= FBANK_MAX_TOL * 2 * 6.55582


# -- each clip alone, from the waveform and from the reference fbank --------------
@needs_reference
@pytest.mark.parametrize("i", [0, 1])
def test_clip_alone_matches_every_reference_array(model, inputs, i):
    ref = ref_single(i)
    frames = num_frames(len(clip(inputs, i)))
    trace = run(model, beats_fbank(torch.from_numpy(clip(inputs, i))[None]), [frames])
    assert frames == int(ref["num_frames"])
    assert not trace["patch_padding_mask"].any()  # alone: every patch valid, as the reference (mask None)
    for name in FEATURES:
        if name in ref:
            assert max_abs(trace[name], ref[name]) <= FEATURE_TOL, name
    assert max_abs(trace["logits"], ref["logits"]) <= LOGITS_TOL
    assert max_abs(torch.sigmoid(trace["logits"]), ref["probs"]) <= PROBS_TOL


@needs_reference
@pytest.mark.parametrize("i", [0, 1])
def test_clip_alone_fed_reference_fbank(model, ref_batched, i):
    ref = ref_single(i)
    frames = int(ref["num_frames"])
    trace = run(model, torch.from_numpy(ref_batched["fbank"][i : i + 1, :frames]), [frames])
    for name in FEATURES:
        if name in ref:
            assert max_abs(trace[name], ref[name]) <= FED_FBANK_TOL, name
    assert max_abs(trace["logits"], ref["logits"]) <= LOGITS_TOL


# -- shared internals of the reference batch --------------------------------------
@needs_reference
def test_batch_internals_and_masks(model, inputs, ref_batched):
    lengths = [int(n) for n in inputs["lengths"]]
    frames = [num_frames(n) for n in lengths]
    trace = run(model, torch.from_numpy(ref_batched["fbank"]), frames)
    # Patch features do not depend on masks: every position of both clips matches.
    for name in ("patch_embed_ln", "encoder_input"):
        assert max_abs(trace[name], ref_batched[name]) <= FED_FBANK_TOL, name
    # The longest clip fills the batch, so its mask and features are those of a clip alone.
    ours = trace["patch_padding_mask"].numpy()
    assert np.array_equal(ours[1], ref_batched["patch_padding_mask"][1])
    assert np.array_equal(np.arange(998) >= frames[1], ref_batched["frame_padding_mask"][1])
    for name in ("layer_input_0", "layer_out_0", "encoder_out"):
        assert max_abs(trace[name][1], ref_batched[name][1]) <= FED_FBANK_TOL, name
    # The short clip keeps exactly its patches alone (144), not the 150 of the released batching.
    assert int((~ours[0]).sum()) == ref_single(0)["encoder_out"].shape[1]
    assert int((~ref_batched["patch_padding_mask"][0]).sum()) > int((~ours[0]).sum())
    # Every frame valid alone is valid in the reference frame mask too.
    assert not ref_batched["frame_padding_mask"][0, : frames[0]].any()


# -- the teacher: batch invariance and short clips ------------------------------
@needs_reference
def test_batched_extraction_returns_single_clip_logits(teacher, inputs):
    clips = [clip(inputs, 0), clip(inputs, 1)]
    together = teacher.extract(clips)
    for i, logits in enumerate(together):
        assert logits.dtype == np.float32 and logits.shape == (527,)
        assert max_abs(logits, ref_single(i)["logits"][0]) <= LOGITS_TOL


@needs_reference
def test_batch_with_random_clips_of_other_lengths(teacher, inputs):
    rng = np.random.default_rng(3)
    extra = [(0.3 * rng.standard_normal(n)).astype(np.float32) for n in (4_321, 17_000, 2_800, 1_600)]
    batch = [extra[0], clip(inputs, 1), extra[1], clip(inputs, 0), extra[2], extra[3]]
    together = teacher.extract(batch)
    assert max_abs(together[1], ref_single(1)["logits"][0]) <= LOGITS_TOL
    assert max_abs(together[3], ref_single(0)["logits"][0]) <= LOGITS_TOL
    for position, waveform in zip((0, 2, 4, 5), extra):
        alone = teacher.extract([waveform])[0]
        assert max_abs(together[position], alone) <= LOGITS_TOL


@needs_reference
def test_short_clip_is_padded_to_one_patch(teacher):
    short = (0.2 * np.random.default_rng(0).standard_normal(1_600)).astype(np.float32)  # 0.1 s
    padded = np.concatenate([short, np.zeros(min_num_samples(teacher.config) - len(short), np.float32)])
    logits = teacher.extract([short])[0]
    assert logits.shape == (527,) and np.isfinite(logits).all()
    assert max_abs(logits, teacher.extract([padded])[0]) == 0.0


@needs_reference
def test_short_clip_fails_with_its_index_under_fail_policy():
    strict = load_teacher("beats", REFERENCE / "beats_tiny.pt", min_duration_policy="fail")
    with pytest.raises(ValidationError, match=r"waveform 1 .* Got 1600"):
        strict.extract([np.zeros(4_000, np.float32), np.zeros(1_600, np.float32)])


def test_bad_options_are_config_errors(tmp_path):
    path = write_tiny_beats_checkpoint(tmp_path / "tiny.pt")
    with pytest.raises(ConfigError, match="min_duration_policy"):
        load_teacher("beats", path, min_duration_policy="trim")
    cpu_bf16 = load_teacher("beats", path, precision="bf16")
    with pytest.raises(ConfigError, match="CUDA"):
        cpu_bf16.extract([np.zeros(4_000, np.float32)])


def test_relative_buckets_follow_the_formula_and_the_cache_is_consistent():
    # Hand-computed with num_buckets 320, max_distance 800: exact below 80, log-spaced up to 159.
    buckets = relative_position_buckets(1_000, 320, 800, torch.device("cpu"))
    for offset, expected in {0: 0, -5: 5, 5: 165, -79: 79, 80: 240, -100: 87, -800: 159, 999: 319}.items():
        i, j = (0, offset) if offset >= 0 else (-offset, 0)
        assert int(buckets[i, j]) == expected, offset
    encoder = BeatsModel(BeatsConfig.from_dict(TINY_CFG)).encoder
    large = encoder.relative_buckets(700, torch.device("cpu"))  # grows the cached table
    small = encoder.relative_buckets(37, torch.device("cpu"))  # sliced from it
    assert torch.equal(large, buckets[:700, :700]) and torch.equal(small, buckets[:37, :37])


# -- loading -----------------------------------------------------------------------
def test_missing_checkpoint_names_the_file(tmp_path):
    missing = tmp_path / "nowhere.pt"
    for load in (lambda: load_teacher("beats", missing), lambda: load_beats_model(missing)):
        with pytest.raises(CheckpointNotFoundError, match="nowhere.pt"):
            load()


def test_malformed_checkpoints_name_the_file_and_what_was_expected(tmp_path):
    good = torch.load(write_tiny_beats_checkpoint(tmp_path / "tiny.pt"), weights_only=True)
    cases = {
        "garbage.pt": (b"not a checkpoint", "weights_only"),
        "list.pt": ([1, 2], "'cfg' and 'model'"),
        "nocfg.pt": ({"model": good["model"]}, "'cfg' and 'model'"),
        "missing.pt": ({**good, "model": {k: v for k, v in good["model"].items() if k != "predictor.bias"}},
                       r"1 missing \(first: \['predictor.bias'\]\)"),
        "extra.pt": ({**good, "model": {**good["model"], "encoder.layers.9.fc1.bias": torch.zeros(3)}},
                     r"1 unexpected \(first: \['encoder.layers.9.fc1.bias'\]\)"),
        "shape.pt": ({**good, "cfg": {**good["cfg"], "predictor_class": 10}}, "predictor.weight"),
        "cfgfield.pt": ({**good, "cfg": {k: v for k, v in good["cfg"].items() if k != "max_distance"}},
                        "max_distance"),
    }
    for name, (content, expected) in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)
        with pytest.raises(CheckpointError, match=expected) as caught:
            load_teacher("beats", path)
        assert name in str(caught.value)


def _released_keys() -> tuple[dict, list[tuple[str, list[int]]]]:
    lines = (REFERENCE / "state_dict_keys.txt").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("## [2]"))
    cfg_line = next(line for line in lines[start:] if line.startswith("## cfg used: "))
    cfg = ast.literal_eval(cfg_line.removeprefix("## cfg used: "))
    rows = [line.split("\t") for line in lines[start:] if line and not line.startswith("#")]
    return cfg, [(key, ast.literal_eval(shape)) for key, shape, _ in rows]


@needs_reference
def test_released_size_model_has_the_released_keys_and_shapes():
    cfg, expected = _released_keys()
    with torch.device("meta"):  # 90M parameters: shapes only, no memory
        released = BeatsModel(BeatsConfig.from_dict(cfg))
    ours = [(key, list(value.shape)) for key, value in released.state_dict().items()]
    assert len(expected) == 252
    assert ours == expected


# -- the tiny checkpoint writer --------------------------------------------------------
@needs_reference
def test_tiny_checkpoint_is_in_the_released_format(tmp_path):
    path = write_tiny_beats_checkpoint(tmp_path / "tiny.pt", seed=5)
    written = torch.load(path, weights_only=True)
    reference = torch.load(REFERENCE / "beats_tiny.pt", weights_only=True)
    assert list(written["model"]) == list(reference["model"])  # same layout, same key order
    assert set(written["cfg"]) == set(reference["cfg"]) and len(written["label_dict"]) == 527
    weights = written["model"]
    assert not torch.allclose(weights["encoder.layers.0.final_layer_norm.weight"], torch.ones(1))
    assert not torch.allclose(weights["encoder.layers.1.self_attn.grep_a"], torch.ones(1))
    assert not torch.allclose(weights["encoder.pos_conv.0.weight_g"], torch.ones(1))
    assert weights["encoder.layers.1.fc2.bias"].abs().min() > 0
    again = torch.load(write_tiny_beats_checkpoint(tmp_path / "again.pt", seed=5), weights_only=True)
    assert all(torch.equal(weights[k], again["model"][k]) for k in weights)


def test_tiny_teacher_spec_and_output(tmp_path):
    path = write_tiny_beats_checkpoint(tmp_path / "tiny.pt", seed=1)
    teacher = load_teacher("beats", path)
    spec = teacher.spec
    assert (spec.name, spec.kind, spec.dim, spec.dtype) == ("beats", "clip", 527, "float32")
    assert spec.fingerprint == teacher.fingerprint and len(spec.fingerprint) == 16
    assert spec.config["random_init"] is True and spec.config["min_duration_policy"] == "pad"
    assert spec.config["cfg"]["max_distance"] == 800
    noise = (0.1 * np.random.default_rng(1).standard_normal(8_000)).astype(np.float32)
    logits = teacher.extract([noise, noise[:3_000]])
    assert logits[0].shape == (527,) and logits[0].std() > 0
    assert not np.allclose(logits[0], logits[1])
    other = load_teacher("beats", write_tiny_beats_checkpoint(tmp_path / "other.pt", seed=2))
    assert other.fingerprint != teacher.fingerprint
    assert load_teacher("beats", path, precision="bf16").fingerprint != teacher.fingerprint


@needs_reference
@pytest.mark.gpu
def test_cuda_fp32_and_bf16_follow_cpu(inputs):
    clips = [clip(inputs, 0), clip(inputs, 1)]
    fp32 = load_teacher("beats", REFERENCE / "beats_tiny.pt").to("cuda").extract(clips)
    bf16 = load_teacher("beats", REFERENCE / "beats_tiny.pt", precision="bf16").to("cuda").extract(clips)
    for i in range(2):
        reference = ref_single(i)["logits"][0]
        assert max_abs(fp32[i], reference) <= 1e-4
        assert max_abs(bf16[i], reference) <= 0.1  # bf16 keeps ~3 significant digits
        assert np.corrcoef(bf16[i], reference)[0, 1] > 0.999
