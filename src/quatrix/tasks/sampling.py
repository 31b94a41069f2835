"""Asking a model a task's items: the rendered prompts, the items' images or clips, and
sampled completions. Evaluation (quatrix.eval.tasks) and GRPO's rollouts both come through
`complete`, so they generate the same way: the one chat format, one shared prefill per
prompt, a stop at <|end|>."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from quatrix.chat import END, render
from quatrix.engine import generate
from quatrix.media import MODALITIES, batch_media, check_encoder, model_inputs


@dataclass
class Completions:
    """G completions per item, item by item: row i*G + j is item i's j-th sample."""

    tokens: list[list[int]]
    texts: list[str]
    truncated: list[bool]  # ran out of tokens before <|end|>
    prompt_ids: list[list[int]]  # one per item
    seconds: float
    cache_bytes: int
    media: dict = field(default_factory=dict)  # the items' model inputs (pixel_values, mel_values), one row per item

    @property
    def new_tokens(self) -> int:
        return sum(len(t) + (not cut) for t, cut in zip(self.tokens, self.truncated))


def prompt_batch(task, items, tokenizer, config, blank_media: bool = False):
    """Rendered prompts (with the assistant opening) and the items' media as model keywords:
    pixel_values [B, 3, S, S] and / or mel_values [B, T] (clips padded with silence); all
    zeros with blank_media, the text-only baseline."""
    prompts = [render(task.prompt(item), tokenizer, add_generation_prompt=True)[0] for item in items]
    media = {}
    for name in MODALITIES:
        values = [getattr(item, name) for item in items]
        if any(v is not None for v in values):
            check_encoder(config, name, f"task {task.name}")
            batch = batch_media(name, values)
            media[name] = torch.zeros_like(batch) if blank_media else batch
    return prompts, model_inputs(media)


def complete(model, tokenizer, task, items, *, num_samples: int = 1, max_new_tokens: int = 64,
             temperature: float = 0.0, top_p: float = 1.0, generator: torch.Generator | None = None,
             blank_media: bool = False) -> Completions:
    prompts, media = prompt_batch(task, items, tokenizer, model.config, blank_media)
    device = next(model.parameters()).device
    stats: dict = {}
    start = time.perf_counter()
    out = generate(model, prompts, max_new_tokens, temperature=temperature, top_p=top_p, num_samples=num_samples,
                   stop_token_ids=[tokenizer.token_id(END)], generator=generator, stats=stats,
                   **{k: v.to(device) for k, v in media.items()})
    seconds = time.perf_counter() - start
    return Completions(tokens=out.tokens, texts=[tokenizer.decode(t) for t in out.tokens],
                       truncated=[r == "length" for r in out.finish_reasons], prompt_ids=prompts,
                       seconds=seconds, cache_bytes=stats.get("cache_bytes", 0), media=media)
