"""Tiny random-weight checkpoints: real formats, loadable by the real loaders, marked as random."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mt2kd.cuts import SAMPLE_RATE
from mt2kd.extract import load_teacher
from mt2kd.extract._tiny import (
    RANDOM_WEIGHTS_FILE,
    TINY_NOTE_FILE,
    checkpoint_is_random,
    make_tiny_checkpoints,
    write_tiny_ecapa_checkpoint,
)

RELEASED_FILES = {"hyperparams.yaml", "embedding_model.ckpt", "mean_var_norm_emb.ckpt", "classifier.ckpt",
                  "label_encoder.txt"}
# top-level keys and tags of the released spkrec-ecapa-voxceleb hyperparams.yaml, in order
RELEASED_LAYOUT = [
    ("n_mels", "tag:yaml.org,2002:int"),
    ("pretrained_path", "tag:yaml.org,2002:str"),
    ("out_n_neurons", "tag:yaml.org,2002:int"),
    ("compute_features", "!new:speechbrain.lobes.features.Fbank"),
    ("mean_var_norm", "!new:speechbrain.processing.features.InputNormalization"),
    ("embedding_model", "!new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN"),
    ("classifier", "!new:speechbrain.lobes.models.ECAPA_TDNN.Classifier"),
    ("mean_var_norm_emb", "!new:speechbrain.processing.features.InputNormalization"),
    ("modules", "tag:yaml.org,2002:map"),
    ("label_encoder", "!new:speechbrain.dataio.encoder.CategoricalEncoder"),
    ("pretrainer", "!new:speechbrain.utils.parameter_transfer.Pretrainer"),
]


@pytest.fixture(scope="module")
def ecapa_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_ecapa_checkpoint(tmp_path_factory.mktemp("tiny") / "ecapa", seed=0)


def test_tiny_ecapa_folder_has_the_released_layout(ecapa_folder: Path) -> None:
    assert {p.name for p in ecapa_folder.iterdir()} == RELEASED_FILES | {RANDOM_WEIGHTS_FILE}
    root = yaml.compose((ecapa_folder / "hyperparams.yaml").read_text())  # nodes only: no tag is built
    assert [(k.value, v.tag) for k, v in root.value] == RELEASED_LAYOUT
    assert dict((k.value, v.value) for k, v in root.value)["pretrained_path"] == "speechbrain/spkrec-ecapa-voxceleb"


def test_speechbrain_loads_every_file_of_the_tiny_folder(ecapa_folder: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from speechbrain.inference.speaker import EncoderClassifier
    from speechbrain.utils.fetching import FetchConfig

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    classifier = EncoderClassifier.from_hparams(
        source=str(ecapa_folder), savedir=str(tmp_path), overrides={"pretrained_path": str(ecapa_folder)},
        fetch_config=FetchConfig(allow_network=False), run_opts={"device": "cpu"})
    assert len(classifier.hparams.label_encoder) == 8
    assert classifier.hparams.label_encoder.decode_ndim(3) == "spk00003"
    assert classifier.mods.classifier.weight.shape == (8, 192)
    assert classifier.hparams.mean_var_norm_emb.glob_mean.shape == (192,)
    wav = torch.sin(torch.arange(SAMPLE_RATE) * 0.05)[None]
    log_probs, score, index, labels = classifier.classify_batch(wav)
    assert log_probs.shape == (1, 8) and labels[0] == f"spk{int(index):05d}"


def test_batchnorm_running_stats_are_not_identity(ecapa_folder: Path) -> None:
    state = torch.load(ecapa_folder / "embedding_model.ckpt", weights_only=True)
    variances = {k: v for k, v in state.items() if k.endswith("running_var")}
    means = {k: v for k, v in state.items() if k.endswith("running_mean")}
    assert len(variances) == len(means) >= 10
    for var, mean in zip(variances.values(), means.values()):
        assert (var - 1).abs().max() > 0.01 and var.min() >= 0.5 and mean.abs().max() > 0.001


def test_tiny_ecapa_is_seeded_and_leaves_the_global_rng_alone(ecapa_folder: Path, tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    again = write_tiny_ecapa_checkpoint(tmp_path / "again", seed=0)
    assert torch.equal(torch.rand(3), expected_next)
    other = write_tiny_ecapa_checkpoint(tmp_path / "other", seed=1)
    a, b, c = (torch.load(f / "embedding_model.ckpt", weights_only=True) for f in (ecapa_folder, again, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["fc.conv.weight"], c["fc.conv.weight"])


def test_checkpoint_is_random(ecapa_folder: Path, tmp_path: Path) -> None:
    assert checkpoint_is_random(ecapa_folder)
    assert checkpoint_is_random(ecapa_folder / "embedding_model.ckpt")
    plain = tmp_path / "released"
    plain.mkdir()
    (plain / "large-v3.pt").write_bytes(b"weights")
    assert not checkpoint_is_random(plain) and not checkpoint_is_random(plain / "large-v3.pt")


@pytest.mark.parametrize("whisper_n_mels", [80, 128])
def test_make_tiny_checkpoints_loads_all_three_teachers(tmp_path: Path, whisper_n_mels: int) -> None:
    paths = make_tiny_checkpoints(tmp_path / "teachers", seed=2, whisper_n_mels=whisper_n_mels)
    assert sorted(paths) == ["beats", "ecapa", "whisper"]
    note = json.loads((tmp_path / "teachers" / TINY_NOTE_FILE).read_text())
    assert note["random_weights"] is True and sorted(note["checkpoints"]) == sorted(paths)
    wav = (0.1 * np.sin(np.arange(SAMPLE_RATE) * 0.03)).astype(np.float32)  # 1 s
    shapes = {}
    for name, path in paths.items():
        assert checkpoint_is_random(path)
        teacher = load_teacher(name, path)
        assert teacher.spec.config["random_init"] is True
        (out,) = teacher.extract([wav])
        assert out.dtype == np.float32 and np.all(np.isfinite(out)) and np.abs(out).max() > 0
        assert out.shape[-1] == teacher.spec.dim
        shapes[name] = out.shape
    assert shapes == {"whisper": (25, 128), "beats": (527,), "ecapa": (192,)}
