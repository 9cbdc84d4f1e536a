"""ECAPA teacher: equal to speechbrain's EncoderClassifier, batch invariant, local-only loading."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mt2kd.cuts import SAMPLE_RATE
from mt2kd.errors import CheckpointError, CheckpointNotFoundError, ConfigError, ValidationError
from mt2kd.extract import load_teacher as load_any_teacher
from mt2kd.extract._ecapa_yaml import parse_hyperparams
from mt2kd.extract._tiny import write_tiny_ecapa_checkpoint
from mt2kd.extract.ecapa import EcapaConfig, EcapaTeacher, equal_key_batches, read_ecapa_config

TOLERANCE = 1e-5  # max abs difference allowed between two computations of one embedding
RELEASED_CHANNELS = (1024, 1024, 1024, 1024, 3072)
# samples; 16_000/16_100/16_000 all give 101 fbank frames and 12_345/12_400 give 78, so they share batches
LENGTHS = [16_000, 12_345, 23_456, 16_100, 640, 7_001, 12_400, 16_000]


def load_teacher(name: str, checkpoint: Path | str, **options: Any) -> EcapaTeacher:
    """``mt2kd.extract.load_teacher``, typed for these tests (they load ECAPA-TDNN only)."""
    teacher = load_any_teacher(name, checkpoint, **options)
    assert isinstance(teacher, EcapaTeacher)
    return teacher


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_ecapa_checkpoint(tmp_path_factory.mktemp("ecapa") / "spkrec", seed=3)


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fail any attempt to open a network connection, and keep the hub offline and its cache empty."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError("network access is not allowed in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


def speechbrain_classifier(folder: Path, savedir: Path, redirect: bool = True) -> Any:
    """speechbrain's own loader on the folder, with the yaml's hub id redirected to the folder."""
    from speechbrain.inference.speaker import EncoderClassifier
    from speechbrain.utils.fetching import FetchConfig

    overrides = {"pretrained_path": str(folder)} if redirect else {}
    return EncoderClassifier.from_hparams(
        source=str(folder), savedir=str(savedir), overrides=overrides, run_opts={"device": "cpu"},
        fetch_config=FetchConfig(allow_network=False, huggingface_cache_dir=str(savedir / "hf_cache")))


def waveforms(lengths: list[int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    t = [np.arange(n) / SAMPLE_RATE for n in lengths]
    return [(0.3 * np.sin(2 * np.pi * 220 * x) + 0.05 * rng.standard_normal(len(x))).astype(np.float32) for x in t]


def reference_embedding(classifier: Any, wav: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return classifier.encode_batch(torch.from_numpy(wav)[None]).squeeze(0).squeeze(0).numpy()


@pytest.mark.parametrize("num_samples", [640, 16_000, 37_123])
def test_single_cut_equals_speechbrain_encode_batch(tiny_folder: Path, tmp_path: Path, no_network: None,
                                                    num_samples: int) -> None:
    classifier = speechbrain_classifier(tiny_folder, tmp_path / "save")
    teacher = load_teacher("ecapa", tiny_folder)
    (wav,) = waveforms([num_samples])
    ours = teacher.extract([wav])[0]
    expected = reference_embedding(classifier, wav)
    assert ours.dtype == np.float32 and ours.shape == (192,)
    assert np.abs(expected).max() > 0.1  # a real, non-degenerate embedding
    assert np.abs(ours - expected).max() <= TOLERANCE


def test_released_size_equals_speechbrain_encode_batch(tmp_path: Path, no_network: None) -> None:
    folder = write_tiny_ecapa_checkpoint(tmp_path / "released", seed=5, channels=RELEASED_CHANNELS,
                                         attention_channels=128)
    teacher = load_teacher("ecapa", folder)
    assert teacher.config.channels == RELEASED_CHANNELS
    (wav,) = waveforms([2 * SAMPLE_RATE], seed=1)
    expected = reference_embedding(speechbrain_classifier(folder, tmp_path / "save"), wav)
    assert np.abs(teacher.extract([wav])[0] - expected).max() <= TOLERANCE


def test_stored_embedding_does_not_depend_on_the_batch(tiny_folder: Path) -> None:
    teacher = load_teacher("ecapa", tiny_folder, max_batch_size=2)
    num_frames = [teacher.config.num_frames(n) for n in LENGTHS]
    assert equal_key_batches(num_frames, 2) == [[0, 3], [7], [1, 6], [2], [4], [5]]
    wavs = waveforms(LENGTHS)
    wavs[7] = wavs[0][::-1].copy()  # same length as cut 0, other audio
    alone = [teacher.extract([w])[0] for w in wavs]
    together = teacher.extract(wavs)
    shuffled = teacher.extract(wavs[::-1])[::-1]
    big_batches = load_teacher("ecapa", tiny_folder).extract(wavs)  # 0, 3 and 7 in one zero-padded batch
    for a, b, c, d in zip(alone, together, shuffled, big_batches):
        assert max(np.abs(a - b).max(), np.abs(a - c).max(), np.abs(a - d).max()) <= TOLERANCE
    assert np.abs(alone[0] - alone[7]).max() > 1e-3  # cuts that share a batch really differ


def test_speechbrain_padded_batches_change_embeddings(tiny_folder: Path, tmp_path: Path,
                                                      no_network: None) -> None:
    """Why we never pad: speechbrain's relative-length batching moves padded cuts by > 1 % of their scale."""
    classifier = speechbrain_classifier(tiny_folder, tmp_path / "save")
    wavs = waveforms(LENGTHS)
    longest = max(LENGTHS)
    padded = torch.zeros(len(wavs), longest)
    for row, w in zip(padded, wavs):
        row[: len(w)] = torch.from_numpy(w)
    relative = torch.tensor([len(w) / longest for w in wavs])
    with torch.no_grad():
        batched = classifier.encode_batch(padded, relative).squeeze(1).numpy()
    alone = np.stack([reference_embedding(classifier, w) for w in wavs])
    error = np.abs(batched - alone).max(axis=1) / np.abs(alone).max(axis=1)
    is_padded = np.array(LENGTHS) < longest
    assert np.all(error[is_padded] > 0.01)  # measured 0.21-2.08 (relative) on these cuts
    assert np.all(error[~is_padded] <= TOLERANCE)  # the unpadded cut is unaffected


def test_hub_id_in_yaml_is_redirected_to_the_folder(tiny_folder: Path, tmp_path: Path,
                                                    no_network: None) -> None:
    from huggingface_hub.errors import LocalEntryNotFoundError

    text = (tiny_folder / "hyperparams.yaml").read_text()
    assert "pretrained_path: speechbrain/spkrec-ecapa-voxceleb\n" in text
    with pytest.raises(LocalEntryNotFoundError):  # unredirected, speechbrain goes to the hub
        speechbrain_classifier(tiny_folder, tmp_path / "plain", redirect=False)
    (wav,) = waveforms([8_000])
    ours = load_teacher("ecapa", tiny_folder).extract([wav])[0]  # no override needed, nothing fetched
    expected = reference_embedding(speechbrain_classifier(tiny_folder, tmp_path / "redirected"), wav)
    assert np.abs(ours - expected).max() <= TOLERANCE


def test_spec_and_options(tiny_folder: Path) -> None:
    teacher = load_teacher("ecapa", tiny_folder)
    spec = teacher.spec
    assert (spec.name, spec.kind, spec.dim, spec.dtype, spec.frame_rate) == ("ecapa", "clip", 192, "float32", None)
    assert spec.fingerprint == teacher.fingerprint and len(spec.fingerprint) == 16
    assert spec.config["random_init"] is True and spec.config["model"]["channels"] == (32, 32, 32, 32, 96)
    assert EcapaConfig.from_dict(spec.config["model"]) == teacher.config
    assert spec.config["precision"] == "fp32"
    assert load_teacher("ecapa", tiny_folder, max_batch_size=4).spec == spec  # batching never changes outputs
    assert load_teacher("ecapa", tiny_folder, precision="bf16").fingerprint != teacher.fingerprint
    with pytest.raises(ConfigError, match="max_batch_size must be a positive int. Got 0"):
        load_teacher("ecapa", tiny_folder, max_batch_size=0)
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        load_teacher("ecapa", tiny_folder, precision="bf16").extract(waveforms([16_000]))


def test_bad_waveforms_are_refused_with_their_index(tiny_folder: Path) -> None:
    teacher = load_teacher("ecapa", tiny_folder)
    assert teacher.config.min_num_samples == 640  # 5 frames: the dilation-4 reflect padding needs them
    with pytest.raises(ValidationError, match="waveform 1 must have at least 640 samples"):
        teacher.extract(waveforms([16_000, 639]))
    nan = waveforms([16_000])[0]
    nan[5] = np.nan
    with pytest.raises(ValidationError, match="waveform 0 must hold finite samples"):
        teacher.extract([nan])


def copy_folder(src: Path, dst: Path, skip: str = "") -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if f.name != skip:
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_malformed_folders_name_the_file(tiny_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError, match="must be a speechbrain pretrained folder"):
        load_teacher("ecapa", tiny_folder / "hyperparams.yaml")  # a file, not the folder
    no_yaml = copy_folder(tiny_folder, tmp_path / "no_yaml", skip="hyperparams.yaml")
    with pytest.raises(CheckpointNotFoundError, match=r"no_yaml/hyperparams.yaml' must exist"):
        load_teacher("ecapa", no_yaml)
    no_ckpt = copy_folder(tiny_folder, tmp_path / "no_ckpt", skip="embedding_model.ckpt")
    with pytest.raises(CheckpointNotFoundError, match=r"no_ckpt/embedding_model.ckpt' must exist"):
        load_teacher("ecapa", no_ckpt)
    garbage = copy_folder(tiny_folder, tmp_path / "garbage")
    (garbage / "embedding_model.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"embedding_model.ckpt' must be a torch state dict"):
        load_teacher("ecapa", garbage)


def test_weights_that_do_not_fit_the_yaml_are_refused(tiny_folder: Path, tmp_path: Path) -> None:
    wider = copy_folder(tiny_folder, tmp_path / "wider")
    yaml_path = wider / "hyperparams.yaml"
    yaml_path.write_text(yaml_path.read_text().replace("channels: [32, 32, 32, 32, 96]",
                                                       "channels: [64, 64, 64, 64, 96]"))
    with pytest.raises(CheckpointError, match=r"embedding_model.ckpt': tensor shapes must match .*Got \["):
        load_teacher("ecapa", wider)
    fewer = copy_folder(tiny_folder, tmp_path / "fewer")
    state = torch.load(fewer / "embedding_model.ckpt", weights_only=True)
    del state["fc.conv.weight"]
    torch.save(state, fewer / "embedding_model.ckpt")
    with pytest.raises(CheckpointError, match=r"1 missing \(first: \['fc.conv.weight'\]\)"):
        load_teacher("ecapa", fewer)


def test_checkpoint_without_batchnorm_counters_loads(tiny_folder: Path, tmp_path: Path) -> None:
    """Step counters never change eval-mode outputs, so checkpoints saved without them still load."""
    folder = copy_folder(tiny_folder, tmp_path / "no_counters")
    state = torch.load(folder / "embedding_model.ckpt", weights_only=True)
    counters = [k for k in state if k.endswith("num_batches_tracked")]
    assert len(counters) >= 10
    torch.save({k: v for k, v in state.items() if k not in counters}, folder / "embedding_model.ckpt")
    wavs = waveforms([9_000])
    with_counters = load_teacher("ecapa", tiny_folder).extract(wavs)[0]
    assert np.array_equal(load_teacher("ecapa", folder).extract(wavs)[0], with_counters)


RELEASED_YAML = """\
n_mels: 80
pretrained_path: speechbrain/spkrec-ecapa-voxceleb
out_n_neurons: 7205
compute_features: !new:speechbrain.lobes.features.Fbank
    n_mels: !ref <n_mels>
mean_var_norm: !new:speechbrain.processing.features.InputNormalization
    norm_type: sentence
    std_norm: False
embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN
    input_size: !ref <n_mels>
    channels: [1024, 1024, 1024, 1024, 3072]
    kernel_sizes: [5, 3, 3, 3, 1]
    dilations: [1, 2, 3, 4, 1]
    attention_channels: 128
    lin_neurons: 192
label_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    paths:
        embedding_model: !ref <pretrained_path>/embedding_model.ckpt
"""


def test_yaml_numbers_are_read_without_building_objects() -> None:
    fields = parse_hyperparams(RELEASED_YAML, Path("hyperparams.yaml"))
    config = EcapaConfig.from_dict(fields)
    assert config.n_mels == 80 and config.channels == RELEASED_CHANNELS and config.lin_neurons == 192
    assert config.std_norm is False and config.activation == "ReLU" and config.se_channels == 128
    leaky = RELEASED_YAML.replace("lin_neurons: 192", "lin_neurons: 96\n    activation: !name:torch.nn.LeakyReLU")
    assert EcapaConfig.from_dict(parse_hyperparams(leaky, Path("h.yaml"))).activation == "LeakyReLU"
    with pytest.raises(CheckpointError, match=r"'embedding_model' must be '!new:speechbrain.lobes.models"):
        parse_hyperparams(RELEASED_YAML.replace("ECAPA_TDNN.ECAPA_TDNN", "Xvector.Xvector"), Path("h.yaml"))
    with pytest.raises(CheckpointError, match="unsupported tag '!include:other.yaml'"):
        parse_hyperparams(RELEASED_YAML + "extra: !include:other.yaml\n", Path("h.yaml"))
    with pytest.raises(CheckpointError, match=r"embedding_model.dropout is not supported"):
        parse_hyperparams(RELEASED_YAML.replace("lin_neurons: 192", "lin_neurons: 192\n    dropout: 0.5"),
                          Path("h.yaml"))
    with pytest.raises(CheckpointError, match="mean_var_norm must be sentence normalisation"):
        parse_hyperparams(RELEASED_YAML.replace("norm_type: sentence", "norm_type: global"), Path("h.yaml"))


def test_read_ecapa_config_from_folder(tiny_folder: Path) -> None:
    config = read_ecapa_config(tiny_folder)
    assert (config.n_mels, config.channels, config.attention_channels) == (80, (32, 32, 32, 32, 96), 16)
    assert config.hop_samples == 160


def test_equal_key_batches() -> None:
    assert equal_key_batches([5, 3, 5, 5, 3, 7], max_batch_size=2) == [[0, 2], [3], [1, 4], [5]]
    assert equal_key_batches([], max_batch_size=4) == []


@pytest.mark.gpu
def test_bf16_on_cuda_is_close_to_fp32(tiny_folder: Path) -> None:
    wavs = waveforms(LENGTHS)
    fp32 = load_teacher("ecapa", tiny_folder).to("cuda").extract(wavs)
    bf16 = load_teacher("ecapa", tiny_folder, precision="bf16").to("cuda").extract(wavs)
    cpu = load_teacher("ecapa", tiny_folder).extract(wavs)
    for a, b, c in zip(fp32, bf16, cpu):
        assert b.dtype == np.float32
        assert np.abs(a - c).max() <= 1e-3  # same fp32 maths on another device
        assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.99
