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
    stays; an image goes with the turn that brought it). `attach_image(path)` sends an
    image with the next message, for models with vision."""

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
        self.pending_image = None  # attached by attach_image, sent with the next user turn

    def reset(self) -> None:
        self.turns = []
        self.pending_image = None

    def attach_image(self, path) -> None:
        """Send an image file with the next message. The model reads one image per
        conversation (as a prefix), so a second one needs a reset first."""
        from quatrix.vision import load_image

        if self.model.vision is None:
            raise ValueError("this model has no vision encoder, so it cannot see images")
        if self.pending_image is not None or self.image() is not None:
            raise ValueError("this conversation already has an image (the model reads one); /reset first")
        self.pending_image = load_image(path, self.model.config.image_size)

    def image(self):
        """The conversation's image, if a turn still in the history carries one."""
        return next((t["image"] for t in self.turns if t.get("image") is not None), None)

    def set_system(self, text: str | None) -> None:
        self.system = text.strip() or None if text else None

    def messages(self, user: str) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        turn = {"role": "user", "content": user}
        if self.pending_image is not None:
            turn["image"] = self.pending_image
        return head + self.turns + [turn]

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
        image = self.pending_image if self.pending_image is not None else self.image()
        pixels = None if image is None else image[None].to(next(self.model.parameters()).device)
        end = self.tokenizer.token_id(END)
        tokens: list[int] = []
        shown = ""
        for new, active in stream(self.model, [prompt], self.max_new_tokens, temperature=self.temperature,
                                  top_k=self.top_k, top_p=self.top_p, stop_token_ids=[end], generator=self.generator,
                                  pixel_values=pixels):
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
        self.turns += [self.messages(user)[-1], {"role": "assistant", "content": text.strip() or "…"}]
        self.pending_image = None
