"""A multi-turn conversation with a model: history, the one chat format, streamed replies.

`quatrix chat` drives it from a terminal or a pipe; a server can hold one per client."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from quatrix.chat import END, render
from quatrix.engine import stream


class ChatSession:
    """Keeps the conversation; `reply(text)` streams the assistant's answer as text pieces
    and adds both turns to the history. When the history no longer fits the model's
    context beside max_new_tokens, the oldest exchanges are dropped (the system message
    stays)."""

    def __init__(self, model, tokenizer, *, system: str | None = None, max_new_tokens: int = 128,
                 temperature: float = 0.7, top_k: int = 0, top_p: float = 0.95, seed: int = 0):
        if max_new_tokens >= model.config.max_seq_len:
            raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt "
                             f"(max_seq_len={model.config.max_seq_len})")
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.temperature, self.top_k, self.top_p = max_new_tokens, temperature, top_k, top_p
        self.generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
        self.system = system
        self.turns: list[dict] = []

    def reset(self) -> None:
        self.turns = []

    def set_system(self, text: str | None) -> None:
        self.system = text.strip() or None if text else None

    def messages(self, user: str) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns + [{"role": "user", "content": user}]

    def prompt_ids(self, user: str) -> list[int]:
        """The rendered prompt, dropping the oldest exchanges until it fits."""
        budget = self.model.config.max_seq_len - self.max_new_tokens
        while True:
            ids = render(self.messages(user), self.tokenizer, add_generation_prompt=True)[0]
            if len(ids) <= budget:
                return ids
            if not self.turns:
                raise ValueError(f"the message is {len(ids)} tokens with its format; at most {budget} fit beside "
                                 f"{self.max_new_tokens} new tokens")
            self.turns = self.turns[2:]

    def reply(self, user: str) -> Iterator[str]:
        if not user.strip():
            raise ValueError("empty message")
        prompt = self.prompt_ids(user)
        end = self.tokenizer.token_id(END)
        tokens: list[int] = []
        shown = ""
        for new, active in stream(self.model, [prompt], self.max_new_tokens, temperature=self.temperature,
                                  top_k=self.top_k, top_p=self.top_p, stop_token_ids=[end], generator=self.generator):
            if not bool(active[0]) or int(new[0]) == end:
                break
            tokens.append(int(new[0]))
            text = self.tokenizer.decode(tokens)
            if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                yield text[len(shown):]
                shown = text
        text = self.tokenizer.decode(tokens)
        if len(text) > len(shown):
            yield text[len(shown):]
        self.turns += [{"role": "user", "content": user}, {"role": "assistant", "content": text.strip() or "…"}]
