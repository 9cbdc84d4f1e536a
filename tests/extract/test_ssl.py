"""HuBERT, WavLM and wav2vec 2.0 teachers: torchaudio's own extract_features, alone and in padded batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mt2kd.errors import CheckpointError, ConfigError
from mt2kd.extract import TeacherConfig, load_teacher
from mt2kd.extract.ssl import NAMES, SslTeacher, parse_layers, write_tiny_ssl_checkpoint

FIDELITY_TOL = 1e-5  # against torchaudio's extract_features on the same weights and audio
BATCH_TOL = 1e-5  # a cut alone against the same cut in a padded batch (matmuls of other shapes)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ssl")
    return {name: write_tiny_ssl_checkpoint(folder / f"{name}.pt", name, seed=i) for i, name in enumerate(NAMES)}


def audio(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.3 * rng.standard_normal(int(seconds * 16_000))).astype(np.float32)


def teacher(path: Path, name: str, **options: object) -> SslTeacher:
    loaded = load_teacher(name, path, **options)
    assert isinstance(loaded, SslTeacher)
    return loaded


def reference(t: SslTeacher, wave: np.ndarray) -> list[np.ndarray]:
    """torchaudio's own extract_features of one cut, no padding: every layer's output ``[T, D]``."""
    with torch.inference_mode():
        outs, _ = t.ssl.model.extract_features(torch.from_numpy(wave)[None])  # type: ignore[operator]
    return [o[0].numpy() for o in outs]


@pytest.mark.parametrize("name", NAMES)
def test_50hz_layers_equal_torchaudio_extract_features(checkpoints: dict[str, Path], name: str) -> None:
    t = teacher(checkpoints[name], name, layers="0,2,1", rate=50)
    wave = audio(1.37, seed=1)
    got = t.extract([wave])[0]
    ref = reference(t, wave)
    expected = np.concatenate([ref[0], ref[2], ref[1]], axis=1)  # layers in the order given
    assert got.shape == expected.shape == (t.num_frames(len(wave)), 3 * t.ssl.dim)
    assert float(np.abs(got - expected).max()) < FIDELITY_TOL


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("pool", ["stack", "mean"])
def test_cut_alone_equals_cut_in_a_padded_batch_of_longer_cuts(checkpoints: dict[str, Path], name: str,
                                                               pool: str) -> None:
    t = teacher(checkpoints[name], name, layers="1,-1", pool=pool)
    short = audio(0.73, seed=2)
    batch = [audio(2.9, seed=3), short, audio(1.6, seed=4)]
    alone = t.extract([short])[0]
    in_batch = t.extract(batch)
    assert in_batch[1].shape == alone.shape
    assert float(np.abs(in_batch[1] - alone).max()) < BATCH_TOL
    for wave, got in zip(batch, in_batch):
        assert got.shape == (t.num_frames(len(wave)), t.dim)


def test_group_norm_front_end_would_mix_padding_in(checkpoints: dict[str, Path]) -> None:
    """What the per-cut front end is for: torchaudio's own batched call changes a padded cut's frames."""
    t = teacher(checkpoints["hubert"], "hubert", rate=50)
    short, long = audio(0.73, seed=2), audio(2.9, seed=3)
    padded = torch.zeros(2, len(long))
    padded[0, : len(short)], padded[1] = torch.from_numpy(short), torch.from_numpy(long)
    with torch.inference_mode():
        outs, lengths = t.ssl.model.extract_features(padded, torch.tensor([len(short), len(long)]))  # type: ignore[operator]
    naive = outs[-1][0, : int(lengths[0])].numpy()
    assert float(np.abs(naive - t.extract([short])[0]).max()) > 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_25hz_stack_and_mean_join_pairs_of_50hz_frames(checkpoints: dict[str, Path], name: str) -> None:
    wave = audio(1.05, seed=5)  # 52 frames at 50 Hz
    at50 = teacher(checkpoints[name], name, layers="0,-1", rate=50).extract([wave])[0]
    stacked = teacher(checkpoints[name], name, layers="0,-1").extract([wave])[0]
    mean = teacher(checkpoints[name], name, layers="0,-1", pool="mean").extract([wave])[0]
    n = at50.shape[0] // 2
    np.testing.assert_array_equal(stacked, at50[: 2 * n].reshape(n, -1))
    np.testing.assert_allclose(mean, (at50[0: 2 * n: 2] + at50[1: 2 * n: 2]) / 2, rtol=0, atol=1e-6)


def test_too_short_cuts_give_empty_arrays(checkpoints: dict[str, Path]) -> None:
    t = teacher(checkpoints["hubert"], "hubert")
    got = t.extract([np.zeros(719, np.float32), audio(0.5, seed=6), np.zeros(100, np.float32)])
    assert [g.shape[0] for g in got] == [0, t.num_frames(8000), 0] and got[0].shape[1] == t.dim


def test_spec_and_layers(checkpoints: dict[str, Path]) -> None:
    t = teacher(checkpoints["wavlm"], "wavlm", layers="0,-1")
    spec = t.spec
    assert (spec.name, spec.kind, spec.frame_rate, spec.dim) == ("wavlm", "frames", 25.0, 2 * 2 * 48)
    assert spec.config["resolved_layers"] == [0, 2] and spec.config["random_init"] is True
    assert spec.config["format"] == "torchaudio" and spec.config["layers"] == "0,-1"
    assert parse_layers(3) == (3,) and parse_layers(" 1, -1") == (1, -1)
    assert teacher(checkpoints["hubert"], "hubert", layers=2).layers == (2,)


def test_bad_options_and_checkpoints_are_refused(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"layers must be distinct indices in \[0, 2\].*Got 3"):
        teacher(checkpoints["hubert"], "hubert", layers="3")
    with pytest.raises(ConfigError, match="layers must be comma-separated"):
        teacher(checkpoints["hubert"], "hubert", layers="a")
    with pytest.raises(ConfigError, match=r"rate must be one of \[50, 25\]"):
        teacher(checkpoints["hubert"], "hubert", rate=100)
    with pytest.raises(ConfigError, match="must hold a WavLM model. Got a wav2vec2 model"):
        teacher(checkpoints["hubert"], "wavlm")
    bare = tmp_path / "bare.pth"
    torch.save(torch.load(checkpoints["hubert"], weights_only=True)["state_dict"], bare)
    with pytest.raises(CheckpointError, match="bare state dict: pass arch=BUNDLE"):
        teacher(bare, "hubert")
    with pytest.raises(ConfigError, match="arch must name a torchaudio.pipelines"):
        teacher(bare, "hubert", arch="NOPE")
    with pytest.raises(CheckpointError, match="must hold every tensor of the model its config describes"):
        teacher(bare, "hubert", arch="HUBERT_BASE")  # a tiny state dict is not HUBERT_BASE's


def test_teacher_flag_reads_a_list_of_layers() -> None:
    config = TeacherConfig.parse("hubert=/ckpt/hubert.pt:layers=3,6,-1,rate=50")
    assert config.options == {"layers": "3,6,-1", "rate": 50}
    assert TeacherConfig.parse(config.to_text()) == config


def test_make_tiny_info_and_extract_end_to_end(tmp_path: Path) -> None:
    from click.testing import CliRunner
    from lhotse.serialization import deserialize_item

    from mt2kd.cli import main
    from mt2kd.extract._plan import make_plan
    from mt2kd.store import TeacherStore
    from mt2kd.tests.extract._corpus import DEMO

    made = CliRunner().invoke(main, ["teachers", "make-tiny", str(tmp_path / "t"), "--teacher", "hubert",
                                     "--teacher", "wavlm", "--teacher", "wav2vec2"])
    assert made.exit_code == 0, made.output
    paths = {name: tmp_path / "t" / name / "tiny.pt" for name in NAMES}
    assert all(p.is_file() and (p.parent / "RANDOM_WEIGHTS").is_file() for p in paths.values())
    info = CliRunner().invoke(main, ["teachers", "info", "hubert", str(paths["hubert"]), "--option", "layers=0,2",
                                     "--option", "rate=50"])
    assert info.exit_code == 0, info.output
    assert "Kind           : frames" in info.output and "Dim            : 96" in info.output
    assert "Frame rate     : 50.0" in info.output and "Random weights : True" in info.output
    cuts = str(DEMO / "speech_cuts.jsonl.gz")
    store_path = tmp_path / "store"
    teachers = ["--teacher", f"hubert={paths['hubert']}:layers=0,2", "--teacher", f"wavlm={paths['wavlm']}",
                "--teacher", f"wav2vec2={paths['wav2vec2']}:rate=50"]
    result = CliRunner().invoke(main, ["extract", "--cuts", cuts, "--store", str(store_path), "--workers", "1",
                                       "--shard-hours", "0.02", *teachers])
    assert result.exit_code == 0, result.output
    store = TeacherStore.open(str(store_path))
    plan = make_plan((cuts,), 0.02)
    all_cuts = [c for s in plan.shards for c in s.cuts]
    assert sorted(store.cut_ids()) == sorted(c["id"] for c in all_cuts) and store.attrs["random_teachers"] is True
    assert store.verify({c["id"]: c["duration"] for c in all_cuts}) == []
    options: dict[str, dict[str, Any]] = {"hubert": {"layers": "0,2"}, "wavlm": {}, "wav2vec2": {"rate": 50}}
    for cut in (all_cuts[0], all_cuts[-1]):
        samples = np.asarray(deserialize_item(cut).resample(16_000).load_audio(), np.float32).mean(axis=0)
        stored = store.get(cut["id"])
        for name, path in paths.items():
            direct = load_teacher(name, path, **options[name]).extract([samples])[0]
            np.testing.assert_allclose(stored[name].astype(np.float32), direct, rtol=2e-3, atol=2e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("name", NAMES)
def test_on_cuda_batches_equal_alone_and_bf16_is_close(checkpoints: dict[str, Path], name: str) -> None:
    waves = [audio(2.9, seed=3), audio(0.73, seed=2), audio(1.6, seed=4)]
    cpu = teacher(checkpoints[name], name, layers="0,-1").extract(waves)
    gpu = teacher(checkpoints[name], name, layers="0,-1").to("cuda")
    batched = gpu.extract(waves)
    for i, wave in enumerate(waves):
        alone = gpu.extract([wave])[0]
        assert float(np.abs(batched[i] - alone).max()) < 1e-4  # GPU kernels of other shapes
        assert float(np.abs(batched[i] - cpu[i]).max()) < 1e-3
    half = teacher(checkpoints[name], name, layers="0,-1", precision="bf16").to("cuda").extract(waves)
    for h, f in zip(half, cpu):
        assert float(np.abs(h - f).max()) < 0.1 * float(np.abs(f).max())


@pytest.mark.slow
def test_a_bare_bundle_state_dict_loads_with_arch(tmp_path: Path) -> None:
    """torchaudio's HUBERT_BASE file layout: the state dict alone; its config comes from the bundle."""
    import torchaudio.pipelines
    from torchaudio.models import wav2vec2_model

    params = {k: v for k, v in torchaudio.pipelines.HUBERT_BASE._params.items() if k != "aux_num_out"}
    torch.manual_seed(0)
    model = wav2vec2_model(**params, aux_num_out=None).eval()
    torch.save(model.state_dict(), tmp_path / "hubert_fairseq_base_ls960.pth")
    t = teacher(tmp_path / "hubert_fairseq_base_ls960.pth", "hubert", arch="HUBERT_BASE", layers="8", rate=50)
    wave = audio(0.9, seed=7)
    with torch.inference_mode():
        want = model.extract_features(torch.from_numpy(wave)[None])[0][8][0].numpy()
    assert float(np.abs(t.extract([wave])[0] - want).max()) < FIDELITY_TOL
    assert t.spec.dim == 768 and t.normalize is False  # HUBERT_BASE does not normalise its waveforms
