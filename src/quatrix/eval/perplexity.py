"""Perplexity and bits per byte of a checkpoint on any corpus."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from quatrix.data.shards import ShardedTokens
from quatrix.data.text import token_folder
from quatrix.precision import autocast_context, resolve_precision
from quatrix.pretrained import load_model_and_tokenizer


def evaluate_checkpoint(ckpt: str | Path, data: list[str], split: str = "val", seq_len: int = 128,
                        batch_size: int = 16, max_batches: int | None = None,
                        cache_dir: str | Path = ".token_cache", precision: str = "fp32") -> dict:
    """Loss, perplexity and bits per byte of the checkpoint (with its own tokenizer) on the
    `split` ("val", "train" or "all") of `data`, with the forward passes in `precision`
    (quatrix.precision: fp32, bf16 autocast, or auto)."""
    if split not in ("val", "train", "all"):
        raise ValueError(f"split must be val, train or all, got {split!r}")
    model, tokenizer = load_model_and_tokenizer(ckpt)
    if seq_len > model.config.max_seq_len:
        raise ValueError(f"seq_len {seq_len} exceeds the model's max_seq_len {model.config.max_seq_len}")
    folder = token_folder(list(data), tokenizer, cache_dir)
    parts = [ShardedTokens(folder, s, tokenizer.vocab_size) for s in (("train", "val") if split == "all" else (split,))]
    tokens = np.concatenate([p[:] for p in parts]) if len(parts) > 1 else parts[0]  # one split stays memory-mapped
    with autocast_context("cpu", resolve_precision(precision, "cpu")):
        result = evaluate_tokens(model, tokens, seq_len, batch_size, tokenizer, max_batches)
    return {**result, "data": list(data), "split": split, "ckpt": str(ckpt)}


@torch.no_grad()
def evaluate_tokens(model, tokens: np.ndarray, seq_len: int, batch_size: int, tokenizer=None,
                    max_batches: int | None = None, device="cpu") -> dict[str, float]:
    """Mean next-token loss over consecutive windows of a token file, its perplexity and,
    with a tokenizer, bits per byte of the text those windows cover (comparable across
    tokenizers)."""
    was_training = model.training
    model.eval()
    n_windows = len(tokens) // seq_len
    if n_windows == 0:
        raise ValueError(f"evaluation data has {len(tokens)} tokens, fewer than one window of {seq_len}")
    n_batches = math.ceil(n_windows / batch_size)
    if max_batches:
        n_batches = min(n_batches, max_batches)
    total_loss, total_tokens, total_bytes = 0.0, 0, 0
    for b in range(n_batches):
        rows = np.stack([tokens[w * seq_len : (w + 1) * seq_len]
                         for w in range(b * batch_size, min((b + 1) * batch_size, n_windows))])
        ids = torch.from_numpy(rows.astype(np.int64)).to(device)
        losses = model(ids, labels=ids, loss_reduction="none")["loss"]  # [B, L-1]
        total_loss += float(losses.double().sum())
        total_tokens += losses.numel()
        if tokenizer is not None:  # bytes of the predicted tokens (positions 1..L-1 of each window)
            total_bytes += sum(len(tokenizer.decode(row[1:].tolist()).encode("utf-8")) for row in rows)
    model.train(was_training)
    loss = total_loss / total_tokens
    result = {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": total_tokens}
    if tokenizer is not None:
        result["bits_per_byte"] = total_loss / math.log(2) / max(1, total_bytes)
    return result
