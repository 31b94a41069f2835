"""The static-shape decode step: a prefilled `quatrix.engine.Cache` seen through fixed
shapes (`StaticCache`), and `decode_step`, which runs it eagerly or compiled with
`torch.compile` (docs/design.md §3). Kept apart from the engine's growing cache, which it
wraps without importing."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor


class StaticLayerCache:
    """One layer of a StaticCache: writes the step's token at the slot tensor, returns every slot."""

    def __init__(self, layer, slot: Tensor):
        self.keys, self.contents, self.slot = layer.keys, layer.contents, slot

    def append(self, keys: Tensor, contents: Tensor) -> tuple[Tensor, Tensor]:
        self.keys.index_copy_(2, self.slot, keys)
        self.contents.index_copy_(2, self.slot, contents)
        return self.keys, self.contents


class StaticCache:
    """A prefilled Cache seen through fixed shapes, for a compiled decode step (a
    quatrix.cache.ModelCache taking one token per row and step).

    The dynamic Cache hands each step views of the slots filled so far, so every step has new
    shapes and torch.compile would compile again at every token. This one shares the Cache's
    buffers but keeps the next slot as a tensor: a step writes its token at that slot
    (index_copy_) and routes over all slots with the empty ones masked off, so every step
    has one shape and one graph (what CUDA graphs need too). Each query routes over the same
    keys as in the dynamic Cache: equal up to floating-point summation order. The engine
    checks max_seq_len before decoding; `advance()` moves to the next slot after a step."""

    def __init__(self, cache):
        if not cache.layers:
            raise ValueError("a StaticCache wraps a prefilled Cache")
        self.slot = torch.tensor([cache.length], device=cache.device)  # the next free slot
        self.key_mask, self.text_len = cache.key_mask, cache.text_len
        self.layers = [StaticLayerCache(layer, self.slot) for layer in cache.layers]

    def extend(self, text_mask: Tensor | int, prefix_len: int) -> tuple[Tensor, Tensor]:
        if prefix_len or not isinstance(text_mask, int) or text_mask != 1:
            raise ValueError("a StaticCache takes decode steps only: one real text token per row")
        positions = self.text_len[:, None].clone()  # [B, 1]
        self.text_len.add_(1)
        self.key_mask.index_fill_(1, self.slot, True)
        return positions, self.key_mask[:, None, None, :]  # [B, 1, 1, slots]

    def advance(self) -> None:
        self.slot.add_(1)


STATIC_BUCKET = 128  # a compiled decode sizes its cache in multiples of this, so a few graphs serve every length


def _decode_logits(model, tokens: Tensor, cache) -> Tensor:
    """One decode step: [B] tokens -> [B, V] logits of the next position."""
    return model(tokens[:, None], cache=cache, check_values=False)["logits"][:, -1]


_COMPILED: dict[str, object] = {}


def decode_step(model, cache, compile: bool = False):
    """The step function `stream` calls once per new token: [B] tokens -> [B, V] logits.

    Eager by default: the model's forward over the growing Cache. compile=True runs
    `torch.compile` over a StaticCache (one shape for the whole generation, so one graph,
    reused by later calls of the same shapes): it fuses the small per-token ops whose
    launch costs dominate batch-1 decoding on a CPU. The first call compiles (tens of
    seconds on a small CPU; benchmarks/decode.py); where the compiler fails (no C compiler,
    an unsupported platform) it warns once and runs the same static step eagerly. Each model,
    batch size, cache bucket and dtype is its own graph; past torch._dynamo's recompile_limit
    (8 graphs by default) dynamo warns and runs the step eagerly."""
    if not compile:
        return lambda tokens: _decode_logits(model, tokens, cache)
    static = StaticCache(cache)

    def step(tokens: Tensor) -> Tensor:
        fn = _COMPILED.get("step")
        if fn is None:
            fn = _COMPILED["step"] = torch.compile(_decode_logits, dynamic=False)
        try:
            logits = fn(model, tokens, static)
        except Exception as e:  # noqa: BLE001 - any compiler failure falls back to the same step, eager
            if fn is not _decode_logits:
                warnings.warn(f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                              f"decoding without it", RuntimeWarning, stacklevel=2)
                _COMPILED["step"] = _decode_logits
            logits = _decode_logits(model, tokens, static)
        static.advance()
        return logits

    return step
