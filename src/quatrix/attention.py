"""Attention baselines for controlled comparisons with Q-Compass.

`MultiHeadAttention(rank=None)` is standard full-rank multi-head attention: four H x H
projections (q, k, v, o), `mixer="mha"`. `MultiHeadAttention(rank=r)` is the rank-matched
ablation of the Quatrix paper, `mixer="mha_rank"`: q, k, v project to rank r and o maps r
back to H, so all four projections are rank r. Both run through the same `route` (fused SDPA
or plain matmul) as Q-Compass and sit in the same `QuatrixBlock`, so a comparison changes
only the mixer.
"""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from quatrix.cache import MixerCache
from quatrix.qcompass import IMPLS, route


class MultiHeadAttention(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        num_heads: int = 1,
        rank: int | None = None,
        dropout: float = 0.0,
        causal: bool = True,
        impl: str = "auto",
    ):
        super().__init__()
        inner = hidden_size if rank is None else rank
        if inner % num_heads:
            raise ValueError(f"attention width {inner} must be divisible by num_heads {num_heads}")
        if impl not in IMPLS:
            raise ValueError(f"unknown attention impl {impl!r}; choose from {IMPLS}")
        self.hidden_size, self.inner, self.num_heads = hidden_size, inner, num_heads
        self.causal, self.dropout, self.impl = causal, dropout, impl
        self.q_proj = nn.Linear(hidden_size, inner, bias=False)
        self.k_proj = nn.Linear(hidden_size, inner, bias=False)
        self.v_proj = nn.Linear(hidden_size, inner, bias=False)
        self.out_proj = nn.Linear(inner, hidden_size)

    def extra_repr(self) -> str:
        return f"H={self.hidden_size}, width={self.inner}, heads={self.num_heads}, causal={self.causal}"

    def heads(self, proj: nn.Linear, x: Tensor) -> Tensor:
        B, L, _ = x.shape
        return proj(x).view(B, L, self.num_heads, -1).transpose(1, 2)  # [B, h, L, inner/h]

    def cache_layout(self) -> tuple[int, int, int, int]:
        """(key heads, key width, value heads, value width) of one cached token: K and V."""
        return self.num_heads, self.inner // self.num_heads, self.num_heads, self.inner // self.num_heads

    def forward(self, x: Tensor, mask: Tensor | None = None, impl: str | None = None,
                cache: MixerCache | None = None) -> Tensor:
        B, L, _ = x.shape
        q, k, v = self.heads(self.q_proj, x), self.heads(self.k_proj, x), self.heads(self.v_proj, x)
        if cache is not None:
            k, v = cache.append(k, v)  # [B, h, T, inner/h]: all cached tokens
        p = self.dropout if self.training else 0.0
        out = route(q, k, v, causal=self.causal, mask=mask, dropout_p=p, impl=impl or self.impl)
        return self.out_proj(out.transpose(1, 2).reshape(B, L, self.inner))  # [B, L, H]
