"""The BEATs audio tagger (fine-tuned form): config and torch modules.

Module and parameter names follow the released checkpoints exactly, so their
``state_dict`` loads without renaming. The forward pass is written for
batches of clips of different lengths: every clip gets the numbers it would
get alone (see :meth:`BeatsModel.forward`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from mt2kd.errors import CheckpointError
from mt2kd.extract._beats_fbank import NUM_MEL_BINS

LAYER_NORM_EPS = 1e-5  # every LayerNorm in BEATs uses the torch default
BUCKET_TABLE_STEP = 256  # patches; the cached bucket table grows in these steps (256 patches = 5.12 s)


@dataclasses.dataclass(frozen=True)
class BeatsConfig:
    """The ``cfg`` dict of a BEATs checkpoint (field names as released)."""

    input_patch_size: int  # side of the square fbank patches, in frames and mel bins (16)
    embed_dim: int  # channels of the patch embedding before projection (512)
    conv_bias: bool  # whether the patch-embedding conv has a bias
    encoder_layers: int  # number of transformer layers (12 released)
    encoder_embed_dim: int  # model width D (768 released)
    encoder_ffn_embed_dim: int  # hidden width of each feed-forward block (3072 released)
    encoder_attention_heads: int  # attention heads per layer (12 released)
    activation_fn: str  # feed-forward nonlinearity; only exact "gelu" is supported
    layer_norm_first: bool  # pre-LN if true; released models are post-LN (false)
    deep_norm: bool  # DeepNorm: residuals scaled by (2 * layers) ** 0.25
    conv_pos: int  # kernel width of the convolutional position embedding, in patches
    conv_pos_groups: int  # groups of that convolution
    relative_position_embedding: bool  # whether attention adds a bucketed relative position bias
    num_buckets: int  # buckets of the relative position table, both directions together
    max_distance: int  # distance (in patches) where the log-spaced buckets end
    gru_rel_pos: bool  # whether a query-dependent gate scales the relative position bias
    finetuned_model: bool  # whether a classification head (``predictor``) exists
    predictor_class: int  # number of output classes (527 AudioSet classes)
    # Training-only settings: read and recorded, but they do not change inference.
    layer_wise_gradient_decay_ratio: float = 1.0  # gradient scaling per layer (identity forward)
    dropout: float = 0.1  # off in inference
    attention_dropout: float = 0.1  # off in inference
    activation_dropout: float = 0.0  # off in inference
    encoder_layerdrop: float = 0.0  # off in inference
    dropout_input: float = 0.0  # off in inference
    predictor_dropout: float = 0.1  # off in inference

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "cfg") -> BeatsConfig:
        """Build from a checkpoint's ``cfg``; keys unknown to this class are ignored."""
        fields = dataclasses.fields(cls)
        required = [f.name for f in fields if f.default is dataclasses.MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise CheckpointError(f"{source} must hold the BEATs cfg fields {required}. Missing {missing}.")
        config = cls(**{f.name: data[f.name] for f in fields if f.name in data})
        config.check_supported(source)
        return config

    def check_supported(self, source: str = "cfg") -> None:
        """Refuse variants this implementation does not compute (rather than compute them wrongly)."""
        wanted = {"activation_fn": "gelu", "layer_norm_first": False, "finetuned_model": True}
        for name, value in wanted.items():
            if getattr(self, name) != value:
                raise CheckpointError(
                    f"{source}: {name} must be {value!r} (a fine-tuned post-LN BEATs tagger). "
                    f"Got {getattr(self, name)!r}."
                )
        if self.encoder_embed_dim % self.encoder_attention_heads:
            raise CheckpointError(
                f"{source}: encoder_embed_dim must be divisible by encoder_attention_heads. "
                f"Got {self.encoder_embed_dim} and {self.encoder_attention_heads}."
            )

    @property
    def head_dim(self) -> int:
        return self.encoder_embed_dim // self.encoder_attention_heads

    @property
    def residual_scale(self) -> float:
        return (2.0 * self.encoder_layers) ** 0.25 if self.deep_norm else 1.0

    @property
    def num_patch_bands(self) -> int:
        """Patches per time step: the 128 mel bins cut into ``input_patch_size`` bands."""
        return NUM_MEL_BINS // self.input_patch_size


def relative_position_buckets(num_patches: int, num_buckets: int, max_distance: int,
                              device: torch.device) -> torch.Tensor:
    """Bucket index [P, P] of the offset ``j - i`` between query i and key j.

    Half the buckets are for positive offsets; within a half, offsets below a
    quarter of the buckets are exact and larger ones are log-spaced up to
    ``max_distance``. The float32 log matches how the model was trained.
    """
    half = num_buckets // 2
    exact = half // 2
    positions = torch.arange(num_patches, device=device)
    offset = positions.unsqueeze(0) - positions.unsqueeze(1)
    bucket = (offset > 0).long() * half
    distance = offset.abs()
    log_ratio = torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact)
    far = (exact + (log_ratio * (half - exact)).long()).clamp(max=half - 1)
    return bucket + torch.where(distance < exact, distance, far)


class WeightNormConv(nn.Module):
    """Grouped conv over time whose weight is ``g * v / ||v||`` (norm over dims 0 and 1 per tap)."""

    def __init__(self, channels: int, kernel: int, groups: int) -> None:
        super().__init__()
        # Registration order = the released key order: bias, weight_g, weight_v.
        self.bias = nn.Parameter(torch.zeros(channels))
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel))
        self.weight_v = nn.Parameter(torch.zeros(channels, channels // groups, kernel))
        self.groups = groups
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, D, P] -> [B, D, P]: centred conv with zero padding, last extra step dropped."""
        v = self.weight_v
        weight = self.weight_g * v / v.norm(dim=(0, 1), keepdim=True)
        out = F.conv1d(x, weight, self.bias, padding=self.kernel // 2, groups=self.groups)
        return out[..., : x.shape[-1]]


class GatedRelPosAttention(nn.Module):
    """Multi-head self-attention with a gated, bucketed relative position bias."""

    def __init__(self, config: BeatsConfig, owns_bias_table: bool) -> None:
        super().__init__()
        dim, heads = config.encoder_embed_dim, config.encoder_attention_heads
        self.config = config
        self.grep_a = nn.Parameter(torch.ones(1, heads, 1, 1))
        # Layer 0 owns the bias table; later layers get the same module assigned
        # afterwards (see BeatsEncoder), which puts their key last, as released.
        if owns_bias_table:
            self.relative_attention_bias = nn.Embedding(config.num_buckets, heads)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.grep_linear = nn.Linear(config.head_dim, 8)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.config.encoder_attention_heads, self.config.head_dim).transpose(1, 2)

    def gate(self, q_heads: torch.Tensor) -> torch.Tensor:
        """Per-query scale [B, H, P, 1] of the position bias, from the unscaled query."""
        batch, heads, length, _ = q_heads.shape
        s = torch.sigmoid(self.grep_linear(q_heads).view(batch, heads, length, 2, 4).sum(-1))
        return (s[..., 0] * (s[..., 1] * self.grep_a.view(1, heads, 1) - 1.0) + 2.0).unsqueeze(-1)

    def forward(self, x: torch.Tensor, position_bias: torch.Tensor | None,
                key_mask: torch.Tensor) -> torch.Tensor:
        """x [B, P, D]; position_bias [H, P, P] or None; key_mask [B, 1, 1, P] (0 or -inf)."""
        q = self._split_heads(self.q_proj(x))
        k = self._split_heads(self.k_proj(x))
        v = self._split_heads(self.v_proj(x))
        scores_bias = key_mask
        if position_bias is not None:
            bias = position_bias.unsqueeze(0)
            if self.config.gru_rel_pos:
                bias = self.gate(q) * bias
            scores_bias = bias + key_mask
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=scores_bias.to(q.dtype))
        batch, _, length, _ = attended.shape
        return self.out_proj(attended.transpose(1, 2).reshape(batch, length, -1))


class BeatsLayer(nn.Module):
    """Post-LN transformer layer with DeepNorm residual scaling."""

    def __init__(self, config: BeatsConfig, owns_bias_table: bool) -> None:
        super().__init__()
        dim = config.encoder_embed_dim
        self.self_attn = GatedRelPosAttention(config, owns_bias_table)
        self.self_attn_layer_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.fc1 = nn.Linear(dim, config.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_embed_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.residual_scale = config.residual_scale

    def forward(self, x: torch.Tensor, position_bias: torch.Tensor | None,
                key_mask: torch.Tensor) -> torch.Tensor:
        x = self.self_attn_layer_norm(self.residual_scale * x + self.self_attn(x, position_bias, key_mask))
        hidden = self.fc2(F.gelu(self.fc1(x)))
        return self.final_layer_norm(self.residual_scale * x + hidden)


class BeatsEncoder(nn.Module):
    def __init__(self, config: BeatsConfig) -> None:
        super().__init__()
        self.config = config
        conv = WeightNormConv(config.encoder_embed_dim, config.conv_pos, config.conv_pos_groups)
        self.pos_conv = nn.Sequential(conv)  # key prefix "pos_conv.0." as released
        with_bias = config.relative_position_embedding
        layers = [BeatsLayer(config, owns_bias_table=with_bias and i == 0) for i in range(config.encoder_layers)]
        if with_bias:
            # One table for all layers: the released state_dict repeats it under every layer's key.
            for layer in layers[1:]:
                layer.self_attn.relative_attention_bias = layers[0].self_attn.relative_attention_bias
        self.layers = nn.ModuleList(layers)
        self.layer_norm = nn.LayerNorm(config.encoder_embed_dim, eps=LAYER_NORM_EPS)
        # Bucket indices depend only on j - i, so the top-left P x P block of a
        # larger table is the table for P: one growing table per device serves
        # every length without recomputation or one cache entry per length.
        self._bucket_cache: dict[str, torch.Tensor] = {}

    def relative_buckets(self, num_patches: int, device: torch.device) -> torch.Tensor:
        """Bucket indices [P, P], from the cached table for this device (grown when too small)."""
        cached = self._bucket_cache.get(str(device))
        if cached is None or cached.shape[0] < num_patches:
            size = -(-num_patches // BUCKET_TABLE_STEP) * BUCKET_TABLE_STEP
            cached = relative_position_buckets(size, self.config.num_buckets, self.config.max_distance, device)
            self._bucket_cache[str(device)] = cached
        return cached[:num_patches, :num_patches]

    def position_bias(self, num_patches: int, device: torch.device) -> torch.Tensor | None:
        """Ungated bias [H, P, P] from layer 0's table (later layers share it)."""
        if not self.config.relative_position_embedding:
            return None
        table = cast(BeatsLayer, self.layers[0]).self_attn.relative_attention_bias
        return table(self.relative_buckets(num_patches, device)).permute(2, 0, 1)

    def embed_positions(self, x: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
        """x + GELU(pos_conv(x)) then LayerNorm; padded patches are zeroed first.

        A lone clip sees zeros beyond its end through the conv's zero padding;
        zeroing a batch's padded patches gives its valid patches the same sums.
        """
        x = x.masked_fill(patch_mask.unsqueeze(-1), 0.0)
        x = x + F.gelu(self.pos_conv(x.transpose(1, 2)).transpose(1, 2))
        return self.layer_norm(x)

    def forward(self, x: torch.Tensor, patch_mask: torch.Tensor) -> list[torch.Tensor]:
        """Layer input and every layer's output, each [B, P, D]; patch_mask True = padded."""
        x = self.embed_positions(x, patch_mask)
        position_bias = self.position_bias(x.shape[1], x.device)
        key_mask = torch.zeros(patch_mask.shape, dtype=torch.float32, device=x.device)
        key_mask = key_mask.masked_fill(patch_mask, float("-inf"))[:, None, None, :]
        outputs = [x]
        for layer in self.layers:
            x = layer(x, position_bias, key_mask)
            outputs.append(x)
        return outputs


class BeatsModel(nn.Module):
    """BEATs fine-tuned tagger: fbank patches -> transformer -> pooled class logits.

    Examples
    --------
    >>> model = BeatsModel(config)                       # config from a checkpoint's cfg
    >>> trace = model(fbank, frames_per_clip=torch.tensor([298]))
    >>> trace["logits"].shape                            # [1, predictor_class]
    """

    def __init__(self, config: BeatsConfig) -> None:
        super().__init__()
        self.config = config
        size = config.input_patch_size
        # Attribute order = the released key order.
        self.post_extract_proj = nn.Linear(config.embed_dim, config.encoder_embed_dim)
        self.patch_embedding = nn.Conv2d(1, config.embed_dim, size, stride=size, bias=config.conv_bias)
        self.encoder = BeatsEncoder(config)
        self.layer_norm = nn.LayerNorm(config.embed_dim, eps=LAYER_NORM_EPS)
        self.predictor = nn.Linear(config.encoder_embed_dim, config.predictor_class)

    def num_patches(self, frames: torch.Tensor) -> torch.Tensor:
        """Patches of clips with these frame counts: whole 16-frame blocks x 8 mel bands."""
        return (frames // self.config.input_patch_size) * self.config.num_patch_bands

    def patch_features(self, fbank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """fbank [B, T, 128] -> (normalised patch embeddings [B, P, 512], projected [B, P, D]).

        Patch ``p = 8 * t + f``: time block t, mel band f; trailing frames that
        do not fill a block are dropped.
        """
        patches = self.patch_embedding(fbank.unsqueeze(1))  # [B, 512, T // 16, 8]
        patches = patches.flatten(2).transpose(1, 2)
        normalised = self.layer_norm(patches)
        return normalised, self.post_extract_proj(normalised)

    def forward(self, fbank: torch.Tensor, frames_per_clip: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every named stage for a batch; ``frames_per_clip`` [B] = each clip's frames alone.

        The patch mask comes from each clip's own patch count, so a clip's
        valid patches, its attention and its pooled logits are what it gets
        alone. (The released code derives the mask by reshaping the frame mask
        into patches, which keeps extra patches for short clips in a batch;
        that is deliberately not reproduced.)
        """
        patch_ln, encoder_input = self.patch_features(fbank)
        valid = self.num_patches(frames_per_clip.to(fbank.device))
        positions = torch.arange(encoder_input.shape[1], device=fbank.device)
        patch_mask = positions.unsqueeze(0) >= valid.unsqueeze(1)
        layers = self.encoder(encoder_input, patch_mask)
        patch_logits = self.predictor(layers[-1]).float()
        summed = patch_logits.masked_fill(patch_mask.unsqueeze(-1), 0.0).sum(dim=1)
        trace = {
            "patch_embed_ln": patch_ln,
            "encoder_input": encoder_input,
            "layer_input_0": layers[0],
            "encoder_out": layers[-1],
            "patch_padding_mask": patch_mask,
            "logits": summed / valid.unsqueeze(1).to(summed.dtype),
        }
        trace.update({f"layer_out_{i}": out for i, out in enumerate(layers[1:])})
        return trace
