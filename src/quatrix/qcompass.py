"""Q-Compass: attention without a value projection (docs/design.md §1).

For a normed input x of shape [B, L, H]:

    state  = x @ W_s                     # [B, L, r]   "where am I?"
    action = x @ W_a                     # [B, L, r]   "where can I go?"
    Q      = state @ action^T / sqrt(r)  # [B, L, L]   causal mask for text, none for images
    out    = W_o(softmax(Q) @ x)         # the content gathered is x itself: no W_V

Variants, all in this one module:
  * Q-Compass-Bi: the same computation without the causal mask (`QCompassBi`).
  * multi-head (h heads): r and H are split into h groups; head k routes with its own
    r/h slice of state/action and gathers its own H/h slice of x; scale sqrt(r/h).
  * SAVO (`q_value_content=True`): the content is each token's own Q-value
    qval = state * action in R^r, projected by W_c in R^{r x H}. The gather is linear, so
    softmax(Q) @ (qval @ W_c) == (softmax(Q) @ qval) @ W_c: we gather in rank r and only
    then apply W_c (and W_o, folded into one r x H matrix). Exact, and far cheaper.

Two interchangeable implementations of the routing + gather (`route`): the fused
`F.scaled_dot_product_attention` kernel and a plain matmul/softmax path. `QCompass.forward_reference`
is the literal formula above (H-wide gather, W_c then W_o), kept as the oracle for tests.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from quatrix.cache import MixerCache

IMPLS = ("auto", "sdpa", "matmul", "chunked")


def route(
    state: Tensor,
    action: Tensor,
    content: Tensor,
    *,
    causal: bool,
    mask: Tensor | None = None,
    dropout_p: float = 0.0,
    impl: str = "auto",
) -> Tensor:
    """softmax(state @ action^T / sqrt(d) [+ mask]) @ content.

    state, action: [B, h, Lq, d]; content: [B, h, Lk, dv]; returns [B, h, Lq, dv].
    `mask` is a complete boolean routing mask broadcastable to [B, h, Lq, Lk] (True = may
    route there; causality already folded in); when it is None, `causal` applies the
    lower-triangular mask, aligned so that the Lq queries are the last Lq keys (as when
    decoding with a cache). Every query must be allowed at least one key.
    """
    Lq, Lk = state.shape[-2], action.shape[-2]
    if causal and mask is None and Lq != Lk:  # SDPA's is_causal aligns top-left: be explicit
        if Lq == 1:
            causal = False  # the newest query sees every key
        else:
            mask = torch.ones(Lq, Lk, dtype=torch.bool, device=state.device).tril(Lk - Lq)
    if impl == "auto":
        impl = _pick_impl(state, content)
    if impl == "sdpa":
        return F.scaled_dot_product_attention(
            state, action, content,
            attn_mask=mask, dropout_p=dropout_p, is_causal=causal and mask is None,
            scale=1.0 / math.sqrt(state.shape[-1]),
        )
    if impl == "matmul" or (impl == "chunked" and dropout_p > 0.0):
        return _route_matmul(state, action, content, causal=causal, mask=mask, dropout_p=dropout_p)
    if impl == "chunked":  # a hand-written Function: run it in one dtype, outside autocast
        device = state.device.type
        if torch.is_autocast_enabled(device):  # its matmuls in the autocast dtype, softmax statistics in fp32
            dtype = torch.get_autocast_dtype(device)
        else:
            dtype = torch.promote_types(torch.promote_types(state.dtype, action.dtype), content.dtype)
        with torch.autocast(device, enabled=False):
            return _ChunkedRoute.apply(
                state.to(dtype), action.to(dtype), content.to(dtype), mask, causal, _chunk_size(action)
            )
    raise ValueError(f"unknown Q-Compass impl {impl!r}; choose from {IMPLS}")


def _route_matmul(state, action, content, *, causal, mask, dropout_p):
    """The plain path: materialises the [B, h, Lq, Lk] routing matrix."""
    scores = torch.matmul(state, action.transpose(-2, -1)) / math.sqrt(state.shape[-1])  # [B, h, Lq, Lk]
    if mask is None and causal:
        Lq, Lk = scores.shape[-2:]
        mask = torch.ones(Lq, Lk, dtype=torch.bool, device=scores.device).tril(Lk - Lq)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1, dtype=_wide(scores.dtype)).to(scores.dtype)  # fp32 statistics in bf16
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return torch.matmul(weights, content)  # [B, h, Lq, dv]


def _pick_impl(state: Tensor, content: Tensor) -> str:
    """Choose the exact path for this device and size (measured in benchmarks/mixer.py).

    On CPU, the fused SDPA kernel is a flash kernel only when the value head is as wide as
    the query head (SAVO, the attention baselines). For raw-x Q-Compass the value (H/h) is
    wider than the routing width (r/h); SDPA then silently falls back to its math path and
    materialises [B, h, L, L]. There the query-chunked path wins: it skips the key blocks
    above the causal diagonal and keeps only [B, h, chunk, L] alive. On GPU the fused kernels
    take unequal widths, so SDPA is used everywhere. A single query being compiled on a CPU
    (the compiled decode step) takes the matmul path: Inductor then fuses its scale, mask and
    softmax into its own kernels, where SDPA stays one opaque call per layer.
    """
    if state.device.type == "cpu" and state.shape[-2] == 1 and torch.compiler.is_compiling():
        return "matmul"
    if state.device.type != "cpu" or content.shape[-1] == state.shape[-1]:
        return "sdpa"
    if state.shape[-2] <= _chunk_size(content):
        return "matmul"
    return "chunked"


def _chunk_size(keys: Tensor) -> int:
    """Query rows per block of the chunked path: the [B, h, chunk, Lk] block holds about 2^20
    floats (cache-sized, so causal skipping pays), within [64, 512] rows for efficient GEMMs."""
    rows = (1 << 20) // max(1, keys.shape[:-1].numel())  # B * h * Lk
    return max(64, min(512, 1 << max(0, rows.bit_length() - 1)))


class _ChunkedRoute(torch.autograd.Function):
    """Routing + gather one block of queries at a time (written here because SDPA has no CPU
    kernel for value heads wider than query heads).

    Forward keeps no routing weights; backward recomputes each block's from state and action.
    Memory is O(chunk * L) instead of O(L^2), and with a causal mask the keys after each
    block's last query are never touched. Each block costs one fused softmax forward (and
    one softmax backward); the scale is folded into the small state tensor. In bf16 the
    matmuls run in bf16 while the softmax, its backward and the gradients summed over
    blocks stay in fp32.
    """

    @staticmethod
    def forward(ctx, state, action, content, mask, causal, chunk):
        scaled = state * (1.0 / math.sqrt(state.shape[-1]))  # [B, h, Lq, d]
        out = content.new_empty(*state.shape[:-1], content.shape[-1])  # [B, h, Lq, dv]
        for s, e, kend in _blocks(state.shape[-2], action.shape[-2], chunk, causal and mask is None):
            weights = _block_weights(scaled, action, mask, causal, s, e, kend)  # [B, h, c, kend], wide
            torch.matmul(weights.to(content.dtype), content[..., :kend, :], out=out[..., s:e, :])
        ctx.save_for_backward(scaled, action, content, mask)
        ctx.causal, ctx.chunk = causal, chunk
        return out

    @staticmethod
    def backward(ctx, d_out):
        scaled, action, content, mask = ctx.saved_tensors
        causal, scale, dtype = ctx.causal, 1.0 / math.sqrt(scaled.shape[-1]), content.dtype
        d_out = d_out.to(dtype)
        d_state = torch.zeros_like(scaled)
        d_action = torch.zeros(action.shape, dtype=_wide(dtype), device=action.device)  # summed over blocks
        d_content = torch.zeros(content.shape, dtype=_wide(dtype), device=content.device)
        for s, e, kend in _blocks(scaled.shape[-2], action.shape[-2], ctx.chunk, causal and mask is None):
            weights = _block_weights(scaled, action, mask, causal, s, e, kend)  # [B, h, c, kend], wide
            d_o = d_out[..., s:e, :]  # [B, h, c, dv]
            d_content[..., :kend, :] += torch.matmul(weights.to(dtype).transpose(-2, -1), d_o)
            d_weights = torch.matmul(d_o, content[..., :kend, :].transpose(-2, -1))  # [B, h, c, kend]
            d_scores = torch.ops.aten._softmax_backward_data(d_weights.to(weights.dtype), weights, -1,
                                                             weights.dtype).to(dtype)
            d_state[..., s:e, :] = torch.matmul(d_scores, action[..., :kend, :]) * scale
            d_action[..., :kend, :] += torch.matmul(d_scores.transpose(-2, -1), scaled[..., s:e, :])
        return d_state, d_action.to(dtype), d_content.to(dtype), None, None, None


def _blocks(Lq: int, Lk: int, chunk: int, skip_future: bool):
    """(start, end, key_end) per query block; queries are the last Lq of Lk positions."""
    offset = Lk - Lq
    for s in range(0, Lq, chunk):
        e = min(s + chunk, Lq)
        yield s, e, (offset + e if skip_future else Lk)


def _block_weights(scaled, action, mask, causal, s, e, kend):
    """Routing weights of queries [s, e) over keys [0, kend): [B, h, e - s, kend]."""
    scores = torch.matmul(scaled[..., s:e, :], action[..., :kend, :].transpose(-2, -1))
    if mask is not None:
        scores.masked_fill_(~mask[..., s:e, :kend], float("-inf"))
    elif causal:  # only the keys inside the block's own span can lie in a query's future
        start = action.shape[-2] - scaled.shape[-2] + s  # key position of query s
        future = torch.ones(e - s, kend - start, dtype=torch.bool, device=scores.device).triu(1)
        scores[..., start:].masked_fill_(future, float("-inf"))
    return torch.softmax(scores, dim=-1, dtype=_wide(scores.dtype))


def _wide(dtype: torch.dtype) -> torch.dtype:
    """The dtype softmax statistics and sums over blocks are kept in: fp32 for bf16/fp16 inputs."""
    return torch.promote_types(dtype, torch.float32)


class QCompass(nn.Module):
    """Causal Q-Compass sequence mixer (single- or multi-head, raw-x or SAVO content).

    Parameter names (`state_proj`, `action_proj`, `content_proj`, `out_proj`) map one to one
    onto the state dicts of the original `quatrix` package.
    """

    causal_default = True

    def __init__(
        self,
        hidden_size: int,
        q_rank: int,
        num_heads: int = 1,
        q_value_content: bool = False,
        dropout: float = 0.0,
        causal: bool | None = None,
        impl: str = "auto",
    ):
        super().__init__()
        if q_rank % num_heads or hidden_size % num_heads:
            raise ValueError(
                f"q_rank ({q_rank}) and hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})"
            )
        if impl not in IMPLS:
            raise ValueError(f"unknown Q-Compass impl {impl!r}; choose from {IMPLS}")
        self.hidden_size, self.q_rank, self.num_heads = hidden_size, q_rank, num_heads
        self.q_value_content = q_value_content
        self.causal = self.causal_default if causal is None else causal
        self.dropout = dropout
        self.impl = impl
        self.state_proj = nn.Linear(hidden_size, q_rank, bias=False)  # W_s
        self.action_proj = nn.Linear(hidden_size, q_rank, bias=False)  # W_a
        if q_value_content:
            self.content_proj = nn.Linear(q_rank, hidden_size, bias=False)  # W_c (SAVO only)
        self.out_proj = nn.Linear(hidden_size, hidden_size)  # W_o

    def extra_repr(self) -> str:
        kind = "SAVO" if self.q_value_content else "raw-x"
        return f"H={self.hidden_size}, r={self.q_rank}, heads={self.num_heads}, content={kind}, causal={self.causal}"

    def project(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """state, action: [B, h, L, r/h], from one GEMM over the stacked W_s, W_a."""
        B, L, _ = x.shape
        h, d = self.num_heads, self.q_rank // self.num_heads
        weight = torch.cat([self.state_proj.weight, self.action_proj.weight])  # [2r, H]
        sa = F.linear(x, weight).view(B, L, 2, h, d)  # [B, L, 2, h, r/h]
        sa = sa.permute(2, 0, 3, 1, 4)  # [2, B, h, L, r/h]
        return sa[0], sa[1]

    def cache_layout(self) -> tuple[int, int, int, int]:
        """(key heads, key width, content heads, content width) of one cached token.

        Raw x: action (r) and the normed input x (H). SAVO: action (r) and qval (r), stored
        once for all heads, since every head gathers the whole qval."""
        h = self.num_heads
        if self.q_value_content:
            return h, self.q_rank // h, 1, self.q_rank
        return h, self.q_rank // h, h, self.hidden_size // h

    def forward(self, x: Tensor, mask: Tensor | None = None, impl: str | None = None,
                cache: MixerCache | None = None) -> Tensor:
        """x: [B, L, H] (already normed) -> [B, L, H]. `mask`: see `route`.

        With a `cache` (quatrix.engine.LayerCache) the L new tokens' actions and contents are
        appended to it and the new queries route over everything cached so far."""
        B, L, H = x.shape
        h = self.num_heads
        state, action = self.project(x)  # [B, h, L, r/h] each
        if self.q_value_content:
            content = self.q_values(state, action)[:, None]  # [B, 1, L, r]
        else:
            content = x.view(B, L, h, H // h).transpose(1, 2)  # [B, h, L, H/h]
        if cache is not None:
            action, content = cache.append(action, content)  # [B, *, T, *]: all cached tokens
        if self.q_value_content:
            # Each head's content slice (qval @ W_c)[:, head] depends on all r qval dims, so
            # every head gathers the whole rank-r qval.
            content = content.expand(B, h, *content.shape[2:])  # [B, h, T, r]
        p = self.dropout if self.training else 0.0
        gathered = route(state, action, content, causal=self.causal, mask=mask, dropout_p=p, impl=impl or self.impl)
        if self.q_value_content:
            return self.savo_output(gathered)
        return self.out_proj(gathered.transpose(1, 2).reshape(B, L, H))

    def q_values(self, state: Tensor, action: Tensor) -> Tensor:
        """SAVO content before W_c: qval = state * action, heads concatenated -> [B, L, r]."""
        B, h, L, d = state.shape
        return (state * action).transpose(1, 2).reshape(B, L, h * d)

    def savo_output(self, gathered: Tensor) -> Tensor:
        """[B, h, L, r] rank-r gathers -> W_o(concat_k gathered_k @ W_c[head k]^T): [B, L, H].

        Folding W_o·W_c into one [H, h*r] matrix costs H·H·r once and saves H·H per token:
        worth it when more than r tokens come at once (training, prefill), not when decoding.
        """
        B, h, L, r = gathered.shape
        H = self.hidden_size
        w_c = self.content_proj.weight.view(h, H // h, r)  # [h, H/h, r]
        if B * L <= r:
            content = torch.einsum("bklr,kcr->blkc", gathered, w_c).reshape(B, L, H)  # head k's W_c slice
            return self.out_proj(content)
        w_o = self.out_proj.weight.view(H, h, H // h)  # [H_out, h, H/h]
        folded = torch.einsum("okc,kcr->okr", w_o, w_c).reshape(H, h * r)  # W_o·W_c per head: [H, h*r]
        return F.linear(gathered.transpose(1, 2).reshape(B, L, h * r), folded, self.out_proj.bias)

    def forward_reference(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """The literal formula of docs/design.md §1, with no restructuring (the test oracle).

        Separate projections, explicit scores and softmax, content built at width H (for SAVO
        qval @ W_c, then gathered per head slice), then W_o. Dropout is not applied.
        """
        B, L, H = x.shape
        h, d = self.num_heads, self.q_rank // self.num_heads
        state = self.state_proj(x).view(B, L, h, d).transpose(1, 2)  # [B, h, L, r/h]
        action = self.action_proj(x).view(B, L, h, d).transpose(1, 2)  # [B, h, L, r/h]
        q = torch.matmul(state, action.transpose(-2, -1)) / math.sqrt(d)  # [B, h, L, L]
        if mask is None and self.causal:
            mask = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
        if mask is not None:
            q = q.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(q, dim=-1)
        if self.q_value_content:
            qval = (state * action).transpose(1, 2).reshape(B, L, self.q_rank)  # [B, L, r]
            content = self.content_proj(qval)  # [B, L, H]
        else:
            content = x
        content = content.view(B, L, h, H // h).transpose(1, 2)  # [B, h, L, H/h]
        gathered = torch.matmul(weights, content)  # [B, h, L, H/h]
        return self.out_proj(gathered.transpose(1, 2).reshape(B, L, H))


class QCompassBi(QCompass):
    """Q-Compass-Bi: the identical computation without the causal mask (images, audio, world)."""

    causal_default = False


def routing_mask(attention_mask: Tensor, causal: bool, query_len: int | None = None) -> Tensor:
    """Boolean routing mask [B, 1, Lq, Lk] from a key padding mask [B, Lk] (1 = real token).

    Queries are the last `query_len` positions (all of them by default). A query may route to
    real keys (and, if causal, only earlier ones), and always to itself, so no row is empty:
    padding positions produce finite, ignored outputs instead of NaNs.
    """
    B, Lk = attention_mask.shape
    Lq = Lk if query_len is None else query_len
    keys = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, Lk]
    q_pos = torch.arange(Lk - Lq, Lk, device=attention_mask.device)[:, None]  # [Lq, 1]
    k_pos = torch.arange(Lk, device=attention_mask.device)[None, :]  # [1, Lk]
    allowed = keys & (k_pos <= q_pos) if causal else keys.expand(B, 1, Lq, Lk)
    return allowed | (k_pos == q_pos)
