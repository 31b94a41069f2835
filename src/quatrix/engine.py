"""Inference engine: per-layer caches, prefill + decode, sampling, batches and streaming.

The engine works on token ids only; tokenization lives elsewhere. Prefill and decode run
through the model's own forward (`model(..., cache=cache)`): one pass over the prompt (and
image / audio prefix) fills the cache, then one token per step.

Cache layouts, floats per token per layer (docs/design.md §3):
  Q-Compass (raw x)  action (r) + the block's normed input x (H)   H + r
  SAVO               action (r) + qval (r); gathered in rank r      2r
  mha / mha_rank     K + V                                         2H / 2r
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from quatrix.blocks import make_mixer
from quatrix.config import QuatrixConfig
from quatrix.loss import chunk_limit
from quatrix.static_decode import STATIC_BUCKET, StaticCache, decode_step  # noqa: F401 (StaticCache: re-exported)
from quatrix.validation import check_token_ids


class LayerCache:
    """Preallocated routing keys and contents of one layer: [B, heads, T_max, width] each
    (a quatrix.cache.MixerCache).

    `append` writes new tokens in place (no torch.cat per token) and returns views of
    everything cached so far."""

    def __init__(self, batch: int, max_len: int, layout: tuple[int, int, int, int], dtype, device):
        key_heads, key_dim, content_heads, content_dim = layout
        self.keys = torch.zeros(batch, key_heads, max_len, key_dim, dtype=dtype, device=device)
        self.contents = torch.zeros(batch, content_heads, max_len, content_dim, dtype=dtype, device=device)
        self.length = 0

    def append(self, keys: Tensor, contents: Tensor) -> tuple[Tensor, Tensor]:
        start, end = self.length, self.length + keys.shape[2]
        if end > self.keys.shape[2]:
            raise ValueError(f"cache is full: {end} tokens do not fit its {self.keys.shape[2]} slots")
        self.keys[:, :, start:end] = keys
        self.contents[:, :, start:end] = contents
        self.length = end
        return self.keys[:, :, :end], self.contents[:, :, :end]

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.contents.nbytes

    def repeat_interleave(self, n: int) -> None:
        self.keys = self.keys.repeat_interleave(n, dim=0)
        self.contents = self.contents.repeat_interleave(n, dim=0)

    def resize(self, max_len: int) -> None:
        """Room for max_len tokens, keeping what is cached (one copy)."""
        for name in ("keys", "contents"):
            old = getattr(self, name)
            new = old.new_zeros(*old.shape[:2], max_len, old.shape[3])
            new[:, :, : self.length] = old[:, :, : self.length]
            setattr(self, name, new)


class Cache:
    """The whole model's cache (a quatrix.cache.ModelCache): one LayerCache per block, plus
    which cached slots hold real tokens (left padding does not) and how many text tokens
    each row has seen (its next position id).

    Room is `max_text_len` text tokens plus the image / audio prefix of the first forward;
    the layers are allocated then, when the prefix length is known. With grow=True a full
    cache doubles its room instead of raising (for callers that cannot know the length in
    advance, like `transformers`' generate); the engine sizes its caches exactly."""

    def __init__(self, model, batch: int, max_text_len: int, dtype=None, device=None, grow: bool = False):
        param = next(model.parameters())
        self.dtype, self.device = dtype or param.dtype, device or param.device
        self.batch, self.max_text_len, self.grow = batch, max_text_len, grow
        self.max_positions = model.config.max_seq_len
        self.layouts = [block.mixer.cache_layout() for block in model.blocks]
        self.layers: list[LayerCache] = []
        self.key_mask = torch.zeros(batch, 0, dtype=torch.bool, device=self.device)
        self.text_len = torch.zeros(batch, dtype=torch.long, device=self.device)
        self.length = 0
        self.text_steps = 0  # text slots appended per row, padding included: a bound on every row's positions
        self.padded = False  # whether any cached key is padding (kept on the host: no sync to ask)

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers)

    def extend(self, text_mask: Tensor | int, prefix_len: int) -> tuple[Tensor, Tensor | None]:
        """Register prefix_len + L new tokens (a [B, L] text_mask, 1 = real; or L when all are
        real). Returns the text position ids [B, L] and the routing mask of the new queries
        over all cached keys (None when nothing is padded). Decode steps pass an int and pay
        no device-to-host sync here; a padded prefill pays one."""
        from quatrix.qcompass import routing_mask

        if isinstance(text_mask, int):
            B, L, real = self.batch, text_mask, None
        else:
            B, L = text_mask.shape
            real = text_mask.bool()
        if B != self.batch:
            raise ValueError(f"batch of {B} rows does not match the cache's {self.batch}")
        if self.text_steps + L > self.max_positions:
            raise ValueError(f"generation ran past max_seq_len={self.max_positions} text positions")
        if not self.layers:  # first forward: allocate for its prefix plus all the text
            size = prefix_len + self.max_text_len
            self.layers = [LayerCache(B, size, lay, self.dtype, self.device) for lay in self.layouts]
            self.key_mask = torch.zeros(B, size, dtype=torch.bool, device=self.device)
        elif prefix_len:
            raise ValueError("an image or audio prefix can only come with the first (prefill) forward")
        n = prefix_len + L
        if self.length + n > self.key_mask.shape[1] and self.grow:
            self._resize(max(self.length + n, 2 * self.key_mask.shape[1]))
        if self.length + n > self.key_mask.shape[1]:
            raise ValueError(f"cache is full: {self.length + n} tokens do not fit its {self.key_mask.shape[1]} slots")
        if real is None:
            positions = self.text_len[:, None] + torch.arange(L, device=self.device)  # [B, L]
            self.text_len += L
            self.key_mask[:, self.length : self.length + n] = True
        else:
            positions = self.text_len[:, None] + (real.long().cumsum(-1) - 1).clamp(min=0)  # [B, L]
            self.text_len += real.sum(-1)
            self.key_mask[:, self.length : self.length + prefix_len] = True
            self.key_mask[:, self.length + prefix_len : self.length + n] = real
            self.padded = self.padded or not bool(real.all())
        self.length += n
        self.text_steps += L
        mask = routing_mask(self.key_mask[:, : self.length], causal=True, query_len=n) if self.padded else None
        return positions, mask

    def _resize(self, size: int) -> None:
        for layer in self.layers:
            layer.resize(size)
        key_mask = self.key_mask.new_zeros(self.batch, size)
        key_mask[:, : self.length] = self.key_mask[:, : self.length]
        self.key_mask = key_mask

    # ------------------------------------------------------------------ continuous batching
    def select(self, rows: Sequence[int]) -> None:
        """Keep only `rows` (in that order), e.g. when sequences finish, and drop the leading
        slots no remaining row uses."""
        index = torch.tensor(list(rows), dtype=torch.long, device=self.device)
        used = self.key_mask[index, : self.length]
        first = int(used.any(0).long().argmax()) if used.numel() and bool(used.any()) else self.length
        self._rebuild([(self, index, first)], self.length - first)

    @classmethod
    def merge(cls, caches: Sequence["Cache"]) -> "Cache":
        """One cache holding the rows of all `caches` (same model): each row's slots are
        right-aligned to the longest, the slots before them masked off like left padding.
        Routing sees only real slots, so a row continues exactly as in its own cache (up to
        floating-point summation order in batched kernels)."""
        merged = caches[0]
        parts = [(c, torch.arange(c.batch, device=c.device), 0) for c in caches]
        width = max(c.length for c in caches)
        merged._rebuild(parts, width)
        return merged

    def _rebuild(self, parts, width: int) -> None:
        """Refill self from (cache, rows, first slot) parts, each right-aligned to `width` slots."""
        first_cache = parts[0][0]
        batch = sum(len(rows) for _, rows, _ in parts)
        size = width + max(16, width // 2)  # room to decode before the next resize
        layers = [LayerCache(batch, size, lay, self.dtype, self.device) for lay in first_cache.layouts]
        key_mask = torch.zeros(batch, size, dtype=torch.bool, device=self.device)
        text_len = torch.zeros(batch, dtype=torch.long, device=self.device)
        start = 0
        for cache, rows, first in parts:
            n, used = len(rows), cache.length - first
            at = width - used  # right-aligned
            for new, old in zip(layers, cache.layers):
                new.keys[start : start + n, :, at:width] = old.keys[rows, :, first : cache.length]
                new.contents[start : start + n, :, at:width] = old.contents[rows, :, first : cache.length]
            key_mask[start : start + n, at:width] = cache.key_mask[rows, first : cache.length]
            text_len[start : start + n] = cache.text_len[rows]
            start += n
        for layer in layers:
            layer.length = width
        self.layers, self.key_mask, self.text_len = layers, key_mask, text_len
        # rows no longer share a slot count: bound positions by the furthest row's own
        self.batch, self.length, self.text_steps, self.grow = batch, width, int(text_len.max()), True
        self.padded = not bool(key_mask[:, :width].all())

    def repeat_interleave(self, n: int) -> None:
        """Row b becomes rows b*n .. b*n + n-1: n samples share one prefill."""
        for layer in self.layers:
            layer.repeat_interleave(n)
        self.key_mask = self.key_mask.repeat_interleave(n, dim=0)
        self.text_len = self.text_len.repeat_interleave(n, dim=0)
        self.batch *= n


def cache_floats_per_token(config: QuatrixConfig) -> int:
    """Floats cached per token per layer: H + r (Q-Compass), 2r (SAVO), 2H (mha), 2r (mha_rank)."""
    key_heads, key_dim, content_heads, content_dim = make_mixer(config).cache_layout()
    return key_heads * key_dim + content_heads * content_dim


# ---------------------------------------------------------------------- sampling
MIN_TEMPERATURE = 1e-5  # sample_next's floor: fp32 logits up to ~1e33 stay finite when divided by it


@dataclass(frozen=True)
class Sampling:
    """temperature 0 = greedy; top_k 0 = off; top_p 1.0 = off."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def sample_next(logits: Tensor, sampling: Sampling, generator: torch.Generator | None = None) -> Tensor:
    """One token per row from [B, V] logits."""
    if sampling.temperature == 0 or sampling.top_k == 1:
        return logits.argmax(dim=-1)
    # below MIN_TEMPERATURE, logits / temperature overflows fp32 (inf, then NaN probabilities):
    # sample at the floor, where the distribution is already greedy but for near-ties
    logits = logits.float() / max(sampling.temperature, MIN_TEMPERATURE)
    if sampling.top_k > 0:
        kth = torch.topk(logits, min(sampling.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        outside = probs.cumsum(-1) - probs >= sampling.top_p  # mass before this token already >= p
        outside[..., 0] = False  # the top token always stays (a top_p that is 0 in fp32 would drop it)
        sorted_logits = sorted_logits.masked_fill(outside, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# ---------------------------------------------------------------------- generation
@dataclass
class Generation:
    """Per row: the new tokens (the stop token not included) and why it ended."""

    tokens: list[list[int]]
    finish_reasons: list[str]  # "stop" | "length"


def left_pad(prompts: Sequence[Sequence[int]] | Tensor, pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Prompts of unequal length -> ids [B, L] and attention mask [B, L], padded on the left."""
    if isinstance(prompts, Tensor):
        if prompts.dim() == 1:
            prompts = prompts[None]
        prompts = prompts.tolist()
    if len(prompts) == 0:
        raise ValueError("no prompts given")
    rows = [list(p) for p in prompts]
    if any(len(r) == 0 for r in rows):
        raise ValueError("empty prompt: every prompt needs at least one token")
    L = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (L - len(r)) + r for r in rows], dtype=torch.long)
    mask = torch.tensor([[0] * (L - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
    return ids, mask


@torch.no_grad()
def stream(
    model,
    prompts: Sequence[Sequence[int]] | Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop_token_ids: Sequence[int] = (),
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    pixel_values: Tensor | None = None,
    mel_values: Tensor | None = None,
    truncate: bool = False,
    stats: dict | None = None,
    compile: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (tokens [N], active [N]) once per step, as CPU tensors, N = len(prompts) *
    num_samples (the samples of prompt b are rows b*num_samples ...). Each decode step pays
    one device-to-host transfer, this one. A row is inactive once it has produced
    a stop token; its later entries are padding. Prompts longer than max_seq_len -
    max_new_tokens raise, or with truncate=True keep their last tokens. Sampling:
    temperature 0 is greedy; top_k 0 and top_p 1.0 are off; `generator` seeds it. A
    `stats` dict receives the cache's size in bytes ("cache_bytes") once it is allocated.
    compile=True decodes with a compiled static-shape step (`decode_step`).
    """
    sampling = Sampling(temperature, top_k, top_p)
    cfg = model.config
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if max_new_tokens >= cfg.max_seq_len:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt (max_seq_len={cfg.max_seq_len})")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    ids, mask = left_pad(prompts)
    budget = cfg.max_seq_len - max_new_tokens
    if ids.shape[1] > budget:
        if not truncate:
            raise ValueError(
                f"prompt has {int(mask.sum(1).max())} tokens; with max_new_tokens={max_new_tokens} at most "
                f"{budget} fit in max_seq_len={cfg.max_seq_len} (or pass truncate=True to keep the last {budget})"
            )
        ids, mask = ids[:, -budget:], mask[:, -budget:]
        if not bool(mask.any(1).all()):
            raise ValueError("a prompt is empty after truncation")
    device = next(model.parameters()).device
    check_token_ids("prompts", ids, cfg.vocab_size, cfg.max_seq_len)  # once, on the host (ids are on the CPU here)
    ids, mask = ids.to(device), mask.to(device)
    stop = torch.tensor(sorted(set(stop_token_ids)), dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    try:
        room = ids.shape[1] + max_new_tokens
        if compile:  # one graph serves every length up to the next bucket
            room = -(-room // STATIC_BUCKET) * STATIC_BUCKET
        cache = Cache(model, ids.shape[0], room)
        out = model(ids, attention_mask=mask, pixel_values=pixel_values, mel_values=mel_values, cache=cache,
                    check_values=False, logits_to_keep=prefill_logits_to_keep(ids, cfg))  # ids checked above
        logits = out["logits"][:, -1]  # [B, V]: left padding puts every row's last token here
        if num_samples > 1:
            cache.repeat_interleave(num_samples)
            logits = logits.repeat_interleave(num_samples, dim=0)
        if stats is not None:
            stats["cache_bytes"] = cache.nbytes
        active = torch.ones(logits.shape[0], dtype=torch.bool, device=device)
        decode = decode_step(model, cache, compile) if max_new_tokens > 1 else None
        for step in range(max_new_tokens):
            tokens = torch.where(active, sample_next(logits, sampling, generator), 0)
            was_active = active
            active = active & ~torch.isin(tokens, stop)
            # the step's one device-to-host transfer: tokens and both activity masks together
            new, alive_before, alive = torch.stack([tokens, was_active.long(), active.long()]).tolist()
            yield torch.tensor(new), torch.tensor(alive_before, dtype=torch.bool)
            if step == max_new_tokens - 1 or not any(alive):
                return
            logits = decode(tokens)
    finally:
        model.train(was_training)


def prefill_logits_to_keep(ids: Tensor, config: QuatrixConfig) -> int | None:
    """A prefill samples from its last position only: 1 (keep that position's logits) when
    the whole [B, L, V] fp32 logits would pass quatrix.loss.CHUNK_BYTES (a 5,120-token
    prompt's are 1 GB at GPT-2's vocabulary), else None, so short prompts run exactly the
    ops they always ran."""
    return 1 if ids.numel() * config.vocab_size * 4 > chunk_limit() else None


def generate(model, prompts, max_new_tokens: int, **kwargs) -> Generation:
    """Run `stream` to the end: per row the new tokens, without the stop token."""
    stop = set(kwargs.get("stop_token_ids", ()))
    rows: list[list[int]] | None = None
    reasons: list[str] = []
    for tokens, active in stream(model, prompts, max_new_tokens, **kwargs):
        if rows is None:
            rows, reasons = [[] for _ in range(tokens.shape[0])], ["length"] * tokens.shape[0]
        for i, (t, a) in enumerate(zip(tokens.tolist(), active.tolist())):
            if not a:
                continue
            if t in stop:
                reasons[i] = "stop"
            else:
                rows[i].append(t)
    return Generation(tokens=rows or [], finish_reasons=reasons)
