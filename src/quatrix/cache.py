"""The cache protocol: what the models' `cache=` arguments must provide.

`quatrix.engine` implements both (`Cache`, `LayerCache`); a new cache (paged, quantized, a
`transformers` cache) only has to satisfy these two small protocols. Layouts per mixer are
given by each mixer's `cache_layout()`: (key heads, key width, content heads, content width)
per token — Q-Compass caches its action (r) and the block's normed input (H), SAVO its
action and Q-value (2r), attention K and V.
"""

from __future__ import annotations

from typing import Protocol, Sequence

from torch import Tensor


class MixerCache(Protocol):
    """One layer's cache, passed to a mixer's forward as `cache`."""

    def append(self, keys: Tensor, contents: Tensor) -> tuple[Tensor, Tensor]:
        """Store the new tokens' routing keys [B, key heads, n, key width] and contents
        [B, content heads, n, content width]; return everything cached so far, new tokens
        last: ([B, key heads, T, key width], [B, content heads, T, content width])."""
        ...


class ModelCache(Protocol):
    """A whole model's cache, passed to `QuatrixLM.forward` as `cache`."""

    layers: Sequence[MixerCache]  # one per block, in order

    def extend(self, text_mask: Tensor | int, prefix_len: int) -> tuple[Tensor, Tensor | None]:
        """Register prefix_len image/audio tokens and L new text tokens: a [B, L] text_mask
        (1 = real, 0 = padding), or the int L when all of them are real (the decode steps:
        then no device-to-host sync is needed). Returns the text position ids [B, L] and the
        boolean routing mask of the new queries over every cached key
        ([B, 1, prefix_len + L, T]), or None when no cached key is padding. Raises
        ValueError when a row would pass the model's max_seq_len text positions."""
        ...
