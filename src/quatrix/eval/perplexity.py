"""Perplexity and bits per byte of a checkpoint on any corpus."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def evaluate_checkpoint(ckpt: str | Path, data: list[str], split: str = "val", seq_len: int = 128,
                        batch_size: int = 16, max_batches: int | None = None,
                        cache_dir: str | Path = ".token_cache") -> dict:
    """Loss, perplexity and bits per byte of the checkpoint (with its own tokenizer) on the
    `split` ("val", "train" or "all") of `data`."""
    from quatrix.data.text import load_tokens, prepare_tokens
    from quatrix.tokenizer import load_model_and_tokenizer
    from quatrix.train.common import evaluate_tokens

    if split not in ("val", "train", "all"):
        raise ValueError(f"split must be val, train or all, got {split!r}")
    model, tokenizer = load_model_and_tokenizer(ckpt)
    if seq_len > model.config.max_seq_len:
        raise ValueError(f"seq_len {seq_len} exceeds the model's max_seq_len {model.config.max_seq_len}")
    paths = prepare_tokens(list(data), tokenizer, cache_dir)
    splits = ["train", "val"] if split == "all" else [split]
    tokens = np.concatenate([load_tokens(paths[s], tokenizer.vocab_size) for s in splits])
    result = evaluate_tokens(model, tokens, seq_len, batch_size, tokenizer, max_batches)
    return {**result, "data": list(data), "split": split, "ckpt": str(ckpt)}
