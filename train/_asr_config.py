"""The ASR heads' configuration, apart from the heads themselves so that CLI flags derive from it without torch."""

from __future__ import annotations

import dataclasses
from typing import Any

from mt2kd._typed import from_dict
from mt2kd.errors import ConfigError

DECODER_GROUP_SIZE = 4  # channels per group of the prediction network's conv (cheap token mixing)


@dataclasses.dataclass(frozen=True)
class AsrConfig:
    """Sizes and loss weights of the ASR heads; travels inside every stage-2 checkpoint.

    Examples
    --------
    >>> cfg = AsrConfig(vocab_size=500)
    >>> AsrConfig.from_dict(cfg.to_dict()) == cfg
    True
    """

    vocab_size: int = 500  # output classes of both heads, blank (id 0) included: the tokenizer's size
    decoder_dim: int = 512  # prediction network width (embedding and conv channels)
    joiner_dim: int = 512  # joiner hidden size (encoder and prediction projections add here)
    context_size: int = 2  # tokens the stateless prediction network sees (2: bigram-like, as in the paper)
    use_transducer: bool = True  # build the transducer (prediction network + joiner) and its loss
    use_ctc: bool = True  # build the CTC head and its loss
    transducer_weight: float = 1.0  # weight of the transducer loss in the ASR loss
    ctc_weight: float = 0.1  # weight of the CTC loss in the ASR loss

    def __post_init__(self) -> None:
        if self.vocab_size < 2:
            raise ConfigError(f"vocab_size must be >= 2 (blank and one token). Got {self.vocab_size}.")
        for name in ("decoder_dim", "joiner_dim", "context_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1. Got {getattr(self, name)!r}.")
        if self.decoder_dim % DECODER_GROUP_SIZE:
            raise ConfigError(f"decoder_dim must be a multiple of {DECODER_GROUP_SIZE} (the conv's channels per "
                              f"group). Got {self.decoder_dim}.")
        if not (self.use_transducer or self.use_ctc):
            raise ConfigError("at least one of use_transducer and use_ctc must be true. Got both false.")
        for name in ("transducer_weight", "ctc_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0. Got {getattr(self, name)!r}.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AsrConfig:
        return from_dict(cls, data, tuples=False)
