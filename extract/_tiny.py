"""Random-weight teachers of the real architectures, written in the real checkpoint formats.

No teacher weights can be downloaded where the tests and the demo run, so
:func:`make_tiny_checkpoints` writes small random-initialised Whisper, BEATs
and ECAPA checkpoints that load through exactly the code paths of released
ones. Each checkpoint sits in its own folder next to a ``RANDOM_WEIGHTS``
marker file; :func:`checkpoint_is_random` finds it, so an extraction job can
record ``random_teachers: true`` in the stores it builds from them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where a model is built: checkpoint_is_random stays cheap for the job's client
    import torch

__all__ = ["DEFAULT_TINY", "RANDOM_WEIGHTS_FILE", "TINY_NAMES", "TINY_NOTE_FILE", "checkpoint_is_random",
           "make_tiny_checkpoints", "write_tiny_ecapa_checkpoint"]

RANDOM_WEIGHTS_FILE = "RANDOM_WEIGHTS"  # marker next to (or inside) a random-weight checkpoint
TINY_NOTE_FILE = "TINY_TEACHERS.json"  # what make_tiny_checkpoints wrote, for people and tools
TINY_ECAPA_CHANNELS = (32, 32, 32, 32, 96)  # released: (1024, 1024, 1024, 1024, 3072)
TINY_ECAPA_ATTENTION_CHANNELS = 16  # released: 128
EMBEDDING_DIM = 192  # the released lin_neurons, kept so stores have the real shape
TINY_NUM_SPEAKERS = 8  # classifier rows (released: 7205 VoxCeleb speakers)
RELEASED_PRETRAINED_PATH = "speechbrain/spkrec-ecapa-voxceleb"  # hub id left in the released yaml

# Same keys, tags and order as the released spkrec-ecapa-voxceleb hyperparams.yaml.
ECAPA_YAML = """\
# ############################################################################
# Model: ECAPA-TDNN speaker embeddings (random weights written by mt2kd)
# ############################################################################

# Feature parameters
n_mels: {n_mels}

# Where the checkpoints live (the released file names the hub repository)
pretrained_path: {pretrained_path}

# Output parameters
out_n_neurons: {num_speakers}

# Model params
compute_features: !new:speechbrain.lobes.features.Fbank
    n_mels: !ref <n_mels>

mean_var_norm: !new:speechbrain.processing.features.InputNormalization
    norm_type: sentence
    std_norm: False

embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN
    input_size: !ref <n_mels>
    channels: {channels}
    kernel_sizes: {kernel_sizes}
    dilations: {dilations}
    attention_channels: {attention_channels}
    lin_neurons: {lin_neurons}

classifier: !new:speechbrain.lobes.models.ECAPA_TDNN.Classifier
    input_size: {lin_neurons}
    out_neurons: !ref <out_n_neurons>

mean_var_norm_emb: !new:speechbrain.processing.features.InputNormalization
    norm_type: global
    std_norm: False

modules:
    compute_features: !ref <compute_features>
    mean_var_norm: !ref <mean_var_norm>
    embedding_model: !ref <embedding_model>
    mean_var_norm_emb: !ref <mean_var_norm_emb>
    classifier: !ref <classifier>

label_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder


pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        embedding_model: !ref <embedding_model>
        mean_var_norm_emb: !ref <mean_var_norm_emb>
        classifier: !ref <classifier>
        label_encoder: !ref <label_encoder>
    paths:
        embedding_model: !ref <pretrained_path>/embedding_model.ckpt
        mean_var_norm_emb: !ref <pretrained_path>/mean_var_norm_emb.ckpt
        classifier: !ref <pretrained_path>/classifier.ckpt
        label_encoder: !ref <pretrained_path>/label_encoder.txt
"""


def checkpoint_is_random(path: str | Path) -> bool:
    """Whether a checkpoint (file or folder) carries the random-weights marker.

    Examples
    --------
    >>> paths = make_tiny_checkpoints(tmp_path)
    >>> checkpoint_is_random(paths["ecapa"]), checkpoint_is_random("large-v3.pt")
    (True, False)
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    return (folder / RANDOM_WEIGHTS_FILE).is_file()


def _mark_random(folder: Path, teacher: str) -> None:
    (folder / RANDOM_WEIGHTS_FILE).write_text(
        f"The {teacher} checkpoint in this folder has random weights (written by "
        f"mt2kd.extract.make_tiny_checkpoints): its outputs are for tests and demos, not for distillation.\n",
        encoding="utf-8")


def _perturb_batchnorms(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Give every BatchNorm non-identity running stats and affine values, so eval mode matters."""
    import torch

    for module in model.modules():
        if not isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            continue
        if module.running_mean is not None and module.running_var is not None:
            shape = module.running_mean.shape
            module.running_mean.copy_(0.1 * torch.randn(shape, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(shape, generator=generator))  # in [0.5, 1.5)
        if module.affine:
            module.weight.copy_(1.0 + 0.1 * torch.randn(module.weight.shape, generator=generator))
            module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))


def _label_encoder_text(num_speakers: int) -> str:
    """speechbrain's CategoricalEncoder file: ``'label' => index`` lines, a separator, then extras."""
    lines = [f"'spk{i:05d}' => {i}" for i in range(num_speakers)]
    return "\n".join(lines) + "\n================\n'starting_index' => 0\n"


def write_tiny_ecapa_checkpoint(folder: str | Path, seed: int = 0, lin_neurons: int = EMBEDDING_DIM,
                                channels: tuple[int, ...] = TINY_ECAPA_CHANNELS,
                                attention_channels: int = TINY_ECAPA_ATTENTION_CHANNELS, n_mels: int = 80,
                                num_speakers: int = TINY_NUM_SPEAKERS) -> Path:
    """Write a random-weight speechbrain ``spkrec-ecapa-voxceleb`` folder (for tests and demos).

    The folder has the released layout: ``hyperparams.yaml`` (its
    ``pretrained_path`` still names the hub repository, as the released one
    does), ``embedding_model.ckpt``, ``mean_var_norm_emb.ckpt``,
    ``classifier.ckpt`` and ``label_encoder.txt``, plus a ``RANDOM_WEIGHTS`` marker.
    Channels must be multiples of 8 (the Res2Net scale).

    Examples
    --------
    >>> folder = write_tiny_ecapa_checkpoint(tmp_path / "ecapa", seed=1)
    >>> load_teacher("ecapa", folder).extract([np.zeros(16_000, np.float32)])[0].shape
    (192,)
    """
    import torch
    from speechbrain.lobes.models.ECAPA_TDNN import Classifier

    from mt2kd.extract.ecapa import EMBEDDING_FILE, EcapaConfig, EcapaEncoder

    config = EcapaConfig(n_mels=n_mels, channels=tuple(channels), attention_channels=attention_channels,
                         lin_neurons=lin_neurons)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]), torch.no_grad():  # leave the caller's RNG untouched
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed + 1)
        model = EcapaEncoder(config).embedding_model
        _perturb_batchnorms(model, generator)
        classifier = Classifier(input_size=lin_neurons, out_neurons=num_speakers)
        norm_stats = {"count": 1000, "glob_mean": torch.randn(lin_neurons, generator=generator),
                      "glob_std": torch.ones(lin_neurons), "spk_dict_mean": {}, "spk_dict_std": {},
                      "spk_dict_count": {}}
    torch.save(model.state_dict(), folder / EMBEDDING_FILE)
    torch.save(classifier.state_dict(), folder / "classifier.ckpt")
    torch.save(norm_stats, folder / "mean_var_norm_emb.ckpt")
    (folder / "label_encoder.txt").write_text(_label_encoder_text(num_speakers), encoding="utf-8")
    (folder / "hyperparams.yaml").write_text(ECAPA_YAML.format(
        n_mels=n_mels, pretrained_path=RELEASED_PRETRAINED_PATH, num_speakers=num_speakers,
        channels=list(config.channels), kernel_sizes=list(config.kernel_sizes), dilations=list(config.dilations),
        attention_channels=attention_channels, lin_neurons=lin_neurons), encoding="utf-8")
    _mark_random(folder, "ecapa")
    return folder


DEFAULT_TINY = ("whisper", "beats", "ecapa")  # what make-tiny writes unless asked for others
# every teacher make-tiny can write
TINY_NAMES = ("whisper", "beats", "ecapa", "hubert", "wavlm", "wav2vec2", "whisper-text")


def make_tiny_checkpoints(folder: str | Path, seed: int = 0, whisper_n_mels: int = 80,
                          names: tuple[str, ...] = DEFAULT_TINY) -> dict[str, Path]:
    """Write tiny random-weight checkpoints of the teachers ``names``; returns their paths by teacher name.

    Layout: ``folder/whisper/tiny.pt``, ``folder/beats/tiny.pt``, ``folder/ecapa/``
    (a speechbrain pretrained folder), ``folder/NAME/tiny.pt`` for ``hubert``,
    ``wavlm`` and ``wav2vec2`` (torchaudio ``{config, state_dict}``),
    ``folder/whisper-text/tiny.pt`` (whisper with the real vocabulary), each
    folder with a ``RANDOM_WEIGHTS`` marker, and ``folder/TINY_TEACHERS.json``
    describing them.

    Examples
    --------
    >>> paths = make_tiny_checkpoints(tmp_path / "teachers")
    >>> sorted(paths)
    ['beats', 'ecapa', 'whisper']
    >>> load_teacher("whisper", paths["whisper"]).spec.dim
    128
    """
    from mt2kd.errors import ConfigError

    unknown = [n for n in names if n not in TINY_NAMES]
    if unknown or not names:
        raise ConfigError(f"tiny teachers must be among {list(TINY_NAMES)}. Got {list(names)}.")
    folder = Path(folder)
    paths = {name: _write_tiny(folder, name, seed, whisper_n_mels) for name in names}
    for name, path in paths.items():
        _mark_random(path if path.is_dir() else path.parent, name)
    _write_note(folder, paths, seed)
    return {name: Path(path) for name, path in paths.items()}


def _write_tiny(folder: Path, name: str, seed: int, whisper_n_mels: int) -> Path:
    if name == "whisper":
        from mt2kd.extract.whisper import write_tiny_whisper_checkpoint

        return write_tiny_whisper_checkpoint(folder / "whisper" / "tiny.pt", seed=seed, n_mels=whisper_n_mels)
    if name == "beats":
        from mt2kd.extract.beats import write_tiny_beats_checkpoint

        return write_tiny_beats_checkpoint(folder / "beats" / "tiny.pt", seed=seed)
    if name == "ecapa":
        return write_tiny_ecapa_checkpoint(folder / "ecapa", seed=seed)
    if name == "whisper-text":
        from mt2kd.extract.whisper_text import write_tiny_whisper_text_checkpoint

        return write_tiny_whisper_text_checkpoint(folder / "whisper-text" / "tiny.pt", seed=seed)
    from mt2kd.extract.ssl import write_tiny_ssl_checkpoint

    return write_tiny_ssl_checkpoint(folder / name / "tiny.pt", name, seed=seed)


def _write_note(folder: Path, paths: dict[str, Path], seed: int) -> None:
    note: dict[str, Any] = {
        "random_weights": True,
        "purpose": "tests and demos only: random-initialised teachers of the real architectures at toy sizes; "
                   "stores built from them are marked random_teachers: true",
        "seed": seed,
        "checkpoints": {name: str(path.relative_to(folder)) for name, path in paths.items()},
    }
    (folder / TINY_NOTE_FILE).write_text(json.dumps(note, indent=2) + "\n", encoding="utf-8")
