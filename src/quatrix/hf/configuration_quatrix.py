"""The `transformers` config of an exported Quatrix model: the Quatrix config as a dict,
plus the standard names that `transformers` tooling looks for."""

from __future__ import annotations

from transformers import PreTrainedConfig

from quatrix.config import QuatrixConfig


class QuatrixHFConfig(PreTrainedConfig):
    model_type = "quatrix"

    quatrix: dict | None = None  # every QuatrixConfig field (the source of truth)
    vocab_size: int = 0  # mirrors of quatrix[...], for tools that read the usual names
    hidden_size: int = 0
    num_hidden_layers: int = 0
    max_position_embeddings: int = 0
    tie_word_embeddings: bool = True
    use_cache: bool = True

    @classmethod
    def from_quatrix(cls, config: QuatrixConfig, **kwargs) -> "QuatrixHFConfig":
        return cls(quatrix=config.to_dict(), vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                   num_hidden_layers=config.num_layers, max_position_embeddings=config.max_seq_len,
                   tie_word_embeddings=config.tie_embeddings, **kwargs)
