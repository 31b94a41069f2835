"""A checkpoint folder as inference and finetuning open it: the model and the tokenizer
saved beside it, checked against each other. Above both the model and the tokenizer, which
know nothing of each other."""

from __future__ import annotations

from pathlib import Path

from quatrix.model import QuatrixLM
from quatrix.tokenizer import has_tokenizer, load_tokenizer

__all__ = ["has_tokenizer", "load_model_and_tokenizer"]


def load_model_and_tokenizer(directory: str | Path, map_location="cpu"):
    """A checkpoint directory's model and the tokenizer saved with it; their vocabularies
    must agree."""
    model = QuatrixLM.from_pretrained(directory, map_location=map_location)
    tokenizer = load_tokenizer(directory)
    if model.config.vocab_size != tokenizer.vocab_size:
        raise ValueError(
            f"checkpoint {directory}: the model's vocabulary ({model.config.vocab_size}) does not match its "
            f"tokenizer's ({tokenizer.vocab_size})"
        )
    return model, tokenizer
