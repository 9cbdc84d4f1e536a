"""Whisper's encoder, run over its own weights with a key-padding mask.

openai-whisper's ``AudioEncoder`` only takes exactly 30 s of log-mel and its
attention call has no way to ignore padding, so a batch of cuts of different
lengths cannot be encoded there without every cut seeing the others'
padding. Here the same weights run in a loop of our own:

- the log-mel is whisper's (same STFT, filters, ``log10``, ``max - 8`` floor
  and ``(x + 4) / 4``), computed per window so the floor is the window's own;
- mel frames and first-convolution outputs past a window's end are zeroed,
  which is exactly the zero padding a lone window's convolutions read there;
- every attention call gets a boolean key-padding mask
  (``scaled_dot_product_attention``), and the positional embedding is sliced
  to the batch's longest window (positions start at 0 for every window).

A window alone and the same window in a padded batch therefore go through the
same arithmetic on its valid frames.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mt2kd.errors import CheckpointError, CheckpointNotFoundError
from mt2kd.extract._frames import HOP_SAMPLES, WINDOW_SAMPLES, num_encoder_frames, num_mel_frames
from mt2kd.extract._whisper_hf import is_hf_folder, load_hf_encoder

N_FFT = 400  # samples per STFT frame (25 ms), whisper's
STFT_PAD = N_FFT // 2  # samples of reflection on each side: torch.stft(center=True) semantics
LOG_FLOOR = 1e-10  # mel power clamp before log10
DYNAMIC_RANGE = 8.0  # log10 units kept below each window's maximum
SUPPORTED_N_MELS = (80, 128)  # the filter banks shipped with openai-whisper
RANDOM_INIT_KEY = "mt2kd_random_init"  # extra checkpoint key marking random test weights


def load_whisper(path: str | Path) -> tuple[torch.nn.Module, dict[str, int], bool]:
    """Load a local openai-whisper ``.pt``; return (float32 encoder on CPU, dims, random-init flag).

    A Hugging Face Whisper folder (``config.json`` + ``model.safetensors``)
    loads too, its encoder tensors renamed onto the same encoder (``_whisper_hf``).

    Only the encoder is ever run, so only it is built (openai-whisper's
    ``AudioEncoder`` from the checkpoint's ``dims``), its parameters the
    float32 copies of the ``encoder.*`` tensors of ``model_state_dict``, read
    from a memory map: the decoder (0.9 of large-v3's 1.55 G parameters) is
    neither built, randomly initialised nor read. Same values as
    ``whisper.load_model(path).encoder`` (tests/extract/test_whisper.py).
    """
    import whisper.model

    path = Path(path)
    if is_hf_folder(path):
        encoder, dims, random_init = load_hf_encoder(path)
        _check_n_mels(path, dims["n_mels"])
        return encoder, dims, random_init
    if path.is_dir():
        pts = sorted(p.name for p in path.glob("*.pt"))
        inside = f" (it holds {', '.join(pts[:3])}: pass one of those)" if pts else ""
        raise CheckpointError(f"whisper checkpoint must be an openai-whisper .pt file or a Hugging Face folder "
                              f"(config.json + model.safetensors). Got {str(path)!r}, which is a folder without "
                              f"config.json{inside}.")
    if not path.is_file():
        raise CheckpointNotFoundError(
            f"whisper checkpoint must be an existing openai-whisper .pt file. Got {str(path)!r}, which does "
            f"not exist; nothing is downloaded at run time: put the file there or pass its local path."
        )
    try:
        checkpoint = _load_checkpoint(path)
        dims = whisper.model.ModelDimensions(**checkpoint["dims"])
        # float32 copies, as load_model makes (releases hold float16): nothing stays tied to the file's map
        state = {key.removeprefix("encoder."): value.to(torch.float32, copy=True)
                 for key, value in checkpoint["model_state_dict"].items() if key.startswith("encoder.")}
        # built on the CPU as whisper builds it (random initial values included): on the meta device its
        # sinusoid table would import torch._dynamo and sympy, 0.9 s in every worker
        encoder = whisper.model.AudioEncoder(dims.n_mels, dims.n_audio_ctx, dims.n_audio_state,
                                             dims.n_audio_head, dims.n_audio_layer)
        missing = sorted(f"encoder.{key}" for key in set(encoder.state_dict()) - set(state))
        if missing:
            raise CheckpointError(f"whisper checkpoint {str(path)!r} must hold every encoder tensor its dims call "
                                  f"for. Missing {len(missing)}: {', '.join(missing[:5])}")
        # the checkpoint's tensors become the parameters (strict: a misshapen or unexpected one is an error)
        encoder.load_state_dict(state, assign=True)
    except CheckpointError:
        raise
    except Exception as e:  # torch.load, the dims and load_state_dict raise many types for a bad file
        raise CheckpointError(
            f"whisper checkpoint {str(path)!r} must be an openai-whisper .pt holding 'dims' and "
            f"'model_state_dict'. Got a file that does not load: {type(e).__name__}: {' '.join(str(e).split())}"
        ) from e
    _check_n_mels(path, dims.n_mels)
    return encoder.eval().requires_grad_(False), dict(dims.__dict__), bool(checkpoint.get(RANDOM_INIT_KEY, False))


def _check_n_mels(path: Path, n_mels: int) -> None:
    if n_mels not in SUPPORTED_N_MELS:
        raise CheckpointError(
            f"whisper checkpoint {str(path)!r}: n_mels must be one of {list(SUPPORTED_N_MELS)}. Got {n_mels}."
        )


def _load_checkpoint(path: Path) -> Any:
    """The checkpoint dict, its tensors memory-mapped (read when used); a legacy non-zip file is read whole."""
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError as e:
        if "mmap" not in str(e):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------- log-mel


def log_mel_batch(windows: list[np.ndarray], n_mels: int, device: str | torch.device) -> torch.Tensor:
    """Whisper log-mel of each window, zero past its end: float32 ``[num_windows, n_mels, max mel]``.

    Each window is reflect-padded on its own (as ``torch.stft(center=True)``
    does for a lone signal), so padding the batch cannot change a window's
    edge frames; the ``max - 8`` floor is taken over the window's own frames.
    """
    import whisper.audio

    num_mel = [num_mel_frames(len(w)) for w in windows]
    padded = [np.pad(np.asarray(w, dtype=np.float32), STFT_PAD, mode="reflect") for w in windows]
    batch = torch.zeros(len(windows), max(len(p) for p in padded), dtype=torch.float32)
    for row, p in zip(batch, padded):
        row[: len(p)] = torch.from_numpy(p)
    batch = batch.to(device)
    stft = torch.stft(batch, N_FFT, HOP_SAMPLES, window=torch.hann_window(N_FFT, device=batch.device),
                      center=False, return_complex=True)
    power = stft[..., : max(num_mel)].abs() ** 2
    mel = whisper.audio.mel_filters(batch.device, n_mels) @ power
    log_spec = torch.clamp(mel, min=LOG_FLOOR).log10()
    valid = _valid_mask(num_mel, log_spec.shape[-1], batch.device)[:, None, :]
    peak = log_spec.masked_fill(~valid, -torch.inf).amax(dim=(1, 2), keepdim=True)
    log_spec = (torch.maximum(log_spec, peak - DYNAMIC_RANGE) + 4.0) / 4.0
    return log_spec.masked_fill(~valid, 0.0)


def pad_to_window(w: np.ndarray) -> np.ndarray:
    """Whisper's ``pad_or_trim``: zeros after the audio up to 30 s (windows are never longer)."""
    return np.pad(np.asarray(w, dtype=np.float32), (0, WINDOW_SAMPLES - len(w)))


def _valid_mask(lengths: list[int], total: int, device: torch.device) -> torch.Tensor:
    """``[len(lengths), total]`` bool, True on each row's first ``lengths[i]`` positions."""
    return torch.arange(total, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]


# ---------------------------------------------------------------- encoder


@dataclasses.dataclass(frozen=True)
class BlockWeights:
    """One residual attention block, query/key/value fused into one matmul."""

    attn_ln: tuple[torch.Tensor, torch.Tensor]  # LayerNorm (weight, bias) before attention, float32
    qkv: tuple[torch.Tensor, torch.Tensor]  # [3 D, D] weight, [3 D] bias (whisper's key has none: zeros)
    out: tuple[torch.Tensor, torch.Tensor]  # attention output projection
    mlp_ln: tuple[torch.Tensor, torch.Tensor]  # LayerNorm before the MLP, float32
    fc1: tuple[torch.Tensor, torch.Tensor]  # [4 D, D] MLP up-projection
    fc2: tuple[torch.Tensor, torch.Tensor]  # [D, 4 D] MLP down-projection


@dataclasses.dataclass(frozen=True)
class EncoderWeights:
    """Everything the encoder loop reads, on one device."""

    conv1: tuple[torch.Tensor, torch.Tensor]  # [D, n_mels, 3], kernel 3, padding 1
    conv2: tuple[torch.Tensor, torch.Tensor]  # [D, D, 3], kernel 3, stride 2, padding 1
    positional: torch.Tensor  # [n_audio_ctx, D] sinusoids, float32
    blocks: list[BlockWeights]  # in order
    ln_post: tuple[torch.Tensor, torch.Tensor]  # final LayerNorm, float32
    num_heads: int  # attention heads


def pack_encoder(encoder: Any, device: str, matmul_dtype: torch.dtype) -> EncoderWeights:
    """Copy a whisper ``AudioEncoder``'s weights to ``device``; matmul weights in ``matmul_dtype``.

    Keeping the big matrices in the autocast dtype spares a cast per call;
    LayerNorms, biases and the positional embedding stay float32.
    """

    def mm(linear: Any) -> tuple[torch.Tensor, torch.Tensor]:  # whisper's modules are untyped
        bias = linear.bias if linear.bias is not None else torch.zeros(linear.weight.shape[0])
        return linear.weight.to(device, matmul_dtype), bias.to(device, torch.float32)

    def ln(norm: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return norm.weight.to(device, torch.float32), norm.bias.to(device, torch.float32)

    blocks = []
    for block in encoder.blocks:
        q, k, v = (mm(block.attn.query), mm(block.attn.key), mm(block.attn.value))
        qkv = (torch.cat([q[0], k[0], v[0]]), torch.cat([q[1], k[1], v[1]]))
        blocks.append(BlockWeights(ln(block.attn_ln), qkv, mm(block.attn.out), ln(block.mlp_ln),
                                   mm(block.mlp[0]), mm(block.mlp[2])))
    return EncoderWeights(mm(encoder.conv1), mm(encoder.conv2),
                          encoder.positional_embedding.to(device, torch.float32),
                          blocks, ln(encoder.ln_post), encoder.blocks[0].attn.n_head)


def encode(weights: EncoderWeights, mel: torch.Tensor, num_mel: list[int], layer: int | list[int]) -> torch.Tensor:
    """Encoder states ``[num_windows, max 50 Hz frames, D]`` of zero-padded log-mel windows.

    ``layer`` -1 is the last block followed by ``ln_post``; ``k >= 0`` is the
    raw output of block ``k``. A list of layers runs the blocks once and
    gives their outputs concatenated in its order (``len(layer) * D`` wide).
    Rows past a window's ``(mel + 1) // 2`` frames are padding and must be
    discarded by the caller.
    """
    valid_mel = _valid_mask(num_mel, mel.shape[-1], mel.device)[:, None, :]
    x = F.gelu(F.conv1d(mel, *weights.conv1, padding=1))
    # conv2 reads one frame past an odd-length window's end: there a lone window has zero padding
    x = x.masked_fill(~valid_mel, 0.0)
    x = F.gelu(F.conv1d(x, *weights.conv2, stride=2, padding=1)).permute(0, 2, 1)
    x = x + weights.positional[: x.shape[1]]
    num_frames = [num_encoder_frames(m * HOP_SAMPLES) for m in num_mel]
    mask: torch.Tensor | None = _valid_mask(num_frames, x.shape[1], x.device)[:, None, None, :]
    if min(num_frames) == x.shape[1]:
        mask = None  # nothing padded: lets SDPA pick its fastest (flash) kernel
    return _run_blocks(weights, x, mask, layer if isinstance(layer, list) else [layer])


def _run_blocks(weights: EncoderWeights, x: torch.Tensor, mask: torch.Tensor | None, layers: list[int]
                ) -> torch.Tensor:
    """The outputs of ``layers`` (-1: last block + ``ln_post``) in one pass, concatenated in that order."""
    last_block = len(weights.blocks) - 1
    wanted = [last_block if k == -1 else k for k in layers]
    outputs: dict[int, torch.Tensor] = {}
    for index, block in enumerate(weights.blocks[: max(wanted) + 1]):
        x = _block(block, x, mask, weights.num_heads)
        if index in wanted:
            outputs[index] = x
    parts = [_layer_norm(outputs[last_block], weights.ln_post) if k == -1 else outputs[k] for k in layers]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


def _block(w: BlockWeights, x: torch.Tensor, mask: torch.Tensor | None, num_heads: int) -> torch.Tensor:
    num_windows, num_frames, dim = x.shape
    qkv = F.linear(_layer_norm(x, w.attn_ln), *w.qkv)
    q, k, v = qkv.view(num_windows, num_frames, 3, num_heads, dim // num_heads).permute(2, 0, 3, 1, 4)
    attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    x = x + F.linear(attended.transpose(1, 2).reshape(num_windows, num_frames, dim), *w.out)
    hidden = F.gelu(F.linear(_layer_norm(x, w.mlp_ln), *w.fc1))
    return x + F.linear(hidden, *w.fc2)


def _layer_norm(x: torch.Tensor, params: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    # whisper normalises in float32 whatever the activations' dtype
    return F.layer_norm(x.float(), (x.shape[-1],), *params, eps=1e-5).to(x.dtype)
