"""The Zipformer encoder (arXiv 2310.11230): a conv front end to 50 Hz, six stacks at other rates, 25 Hz out.

Stack ``i`` runs its layers at ``50 / downsampling[i]`` Hz: it downsamples its
input (a learned weighted mean over each group of frames), runs its layers,
repeats each frame back to 50 Hz and mixes the result with its input through
a learned per-channel bypass. Stacks of other widths meet by truncating or
zero-padding channels. After every stack the encoder forms a full-width
(``output_dim``) state: the stack's own channels, the rest taken from the
latest earlier stack that had them (zeros where none had). That state,
downsampled to 25 Hz by the learned output downsampler, is the stack's entry
in ``hidden_states``; the last one is the encoder output the heads read.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from mt2kd.train._regularisers import LAYER_SKIP, Clock
from mt2kd.train._zipformer_config import ZipformerConfig
from mt2kd.train._zipformer_layer import ZipformerLayer
from mt2kd.train._zipformer_parts import (
    BiasNorm,
    Bypass,
    Downsample,
    lengths_to_mask,
    swoosh_l,
    swoosh_r,
    to_channels,
    upsample,
)


@dataclasses.dataclass
class ZipformerStates:
    """Every state one forward pass of :class:`ZipformerEncoder` produces."""

    hidden_states: list[torch.Tensor]  # per stack: [B, T25, output_dim] full-width state at 25 Hz
    mask: torch.Tensor  # [B, T25] bool, True on valid 25 Hz frames
    lengths: torch.Tensor  # [B] valid 25 Hz frames
    stack_outputs: list[torch.Tensor]  # per stack: [B, T50, encoder_dims[i]] its output at 50 Hz (after bypass)
    layer_outputs: list[list[torch.Tensor]]  # per stack, per layer: [B, T_i, encoder_dims[i]] at the stack's rate
    layer_masks: list[torch.Tensor]  # per stack: [B, T_i] valid frames at the stack's rate


class ConvEmbed(nn.Module):
    """Three 3x3 convs over (time, freq) (time stride 2 in the second), a ConvNeXt block, linear, BiasNorm.

    100 Hz -> 50 Hz: ``(T + 1) // 2`` frames; every conv sees zeros past a cut's end.
    """

    def __init__(self, cfg: ZipformerConfig, input_dim: int) -> None:
        super().__init__()
        c1, c2, c3 = cfg.frontend_channels
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(c2, c3, 3, stride=(1, 2), padding=1)
        self.depthwise = nn.Conv2d(c3, c3, 7, padding=3, groups=c3)
        self.expand, self.contract = nn.Conv2d(c3, 3 * c3, 1), nn.Conv2d(3 * c3, c3, 1)
        freq = ((input_dim + 1) // 2 + 1) // 2
        self.proj = nn.Linear(c3 * freq, cfg.encoder_dims[0])
        self.norm = BiasNorm(cfg.encoder_dims[0])

    def forward(self, fbank: torch.Tensor, num_frames: torch.Tensor) -> torch.Tensor:
        def masked(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            return x * lengths_to_mask(lengths, x.shape[2])[:, None, :, None]

        half = (num_frames + 1) // 2
        x = masked(swoosh_r(self.conv1(masked(fbank[:, None], num_frames))), num_frames)
        x = masked(swoosh_r(self.conv2(x)), half)
        x = masked(swoosh_r(self.conv3(x)), half)
        x = masked(x + self.contract(swoosh_l(self.expand(self.depthwise(x)))), half)  # ConvNeXt
        b, c, t, f = x.shape
        return self.norm(self.proj(x.permute(0, 2, 1, 3).reshape(b, t, c * f)))


class Stack(nn.Module):
    """The layers of one stack at ``50 / factor`` Hz, between a downsample and an upsample, and its bypass."""

    def __init__(self, cfg: ZipformerConfig, index: int, clock: Clock) -> None:
        super().__init__()
        self.factor = cfg.downsampling[index]
        self.downsample = Downsample(self.factor) if self.factor > 1 else None
        self.layers = nn.ModuleList(ZipformerLayer(cfg, index, clock) for _ in range(cfg.num_layers[index]))
        self.bypass = Bypass(cfg.encoder_dims[index], clock)
        self.clock = clock

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """``x`` ``[B, T50, C]`` -> (output at 50 Hz, each layer's output at the stack's rate, that rate's mask)."""
        y, inner_mask = self.downsample(x, mask) if self.downsample is not None else (x, mask)
        outputs = []
        for layer in self.layers:
            y = self._maybe_skip(layer, y, inner_mask)
            outputs.append(y)
        up = upsample(y, self.factor, x.shape[1])
        return self.bypass(x, up) * mask[..., None], outputs, inner_mask

    def _maybe_skip(self, layer: nn.Module, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Stochastic depth: in train mode each cut skips the layer with the scheduled LAYER_SKIP rate."""
        out: torch.Tensor = layer(y, mask)
        rate = self.clock.value(LAYER_SKIP) if self.training else 0.0
        if rate <= 0.0:
            return out
        keep = torch.rand(y.shape[0], 1, 1, device=y.device) >= rate
        return torch.where(keep, out, y)


class ZipformerEncoder(nn.Module):
    """Normalised fbank ``[B, T100, input_dim]`` -> :class:`ZipformerStates` (every stack and layer).

    Examples
    --------
    >>> from mt2kd.train._zipformer_config import ZIPFORMER_PRESETS
    >>> enc = ZipformerEncoder(ZIPFORMER_PRESETS["tiny"], input_dim=80).eval()
    >>> states = enc(torch.zeros(2, 100, 80), torch.tensor([100, 60]))
    >>> len(states.hidden_states), tuple(states.hidden_states[-1].shape), states.lengths.tolist()
    (6, (2, 25, 32), [25, 15])
    """

    def __init__(self, cfg: ZipformerConfig, input_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.clock = Clock(cfg.schedule_scale)
        self.embed = ConvEmbed(cfg, input_dim)
        self.stacks = nn.ModuleList(Stack(cfg, i, self.clock) for i in range(cfg.num_stacks))
        self.out_downsample = Downsample(2)

    def forward(self, fbank: torch.Tensor, num_frames: torch.Tensor) -> ZipformerStates:
        x = self.embed(fbank, num_frames)
        mask50 = lengths_to_mask((num_frames + 1) // 2, x.shape[1])
        full = x.new_zeros(*x.shape[:2], self.cfg.output_dim)
        hidden, stack_outputs, layer_outputs, layer_masks = [], [], [], []
        mask25 = mask50
        for stack, dim in zip(self.stacks, self.cfg.encoder_dims):
            x, layers, inner_mask = stack(to_channels(x, dim), mask50)
            stack_outputs.append(x)
            layer_outputs.append(layers)
            layer_masks.append(inner_mask)
            full = torch.cat([x, full[..., dim:]], dim=-1) if dim < full.shape[-1] else x
            state, mask25 = self.out_downsample(full, mask50)
            hidden.append(state)
        lengths = mask25.sum(1)
        return ZipformerStates(hidden, mask25, lengths, stack_outputs, layer_outputs, layer_masks)


def set_training_step(model: nn.Module, step: int) -> None:
    """Tell every Zipformer inside ``model`` the training step its scheduled rates read (no-op for others)."""
    for module in model.modules():
        if isinstance(module, ZipformerEncoder):
            module.clock.step = step

