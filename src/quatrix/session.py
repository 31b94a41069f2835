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
    stays; an image or clip goes with the turn that brought it). `attach_image(path)` and
    `attach_audio(path)` send an image or a clip with the next message, for models with
    vision or audio."""

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
        self.pending: dict = {}  # "image" / "audio" attached, sent with the next user turn

    def reset(self) -> None:
        self.turns = []
        self.pending = {}

    def attach_image(self, path) -> None:
        """Send an image file with the next message. The model reads one image per
        conversation (as a prefix), so a second one needs a reset first."""
        from quatrix.vision import load_image

        if self.model.vision is None:
            raise ValueError("this model has no vision encoder, so it cannot see images")
        self._check_free("image")
        self.pending["image"] = load_image(path, self.model.config.image_size)

    def attach_audio(self, path) -> None:
        """Send an audio file (WAV, FLAC; any sample rate) with the next message; one clip
        per conversation, as for images."""
        from quatrix.data.speech import read_audio

        config = self.model.config
        if self.model.audio is None:
            raise ValueError("this model has no audio encoder, so it cannot hear audio")
        self._check_free("audio")
        self.pending["audio"] = read_audio(path, config.sample_rate, config.audio_max_seconds)

    def _check_free(self, key: str) -> None:
        if key in self.pending or self.attached(key) is not None:
            raise ValueError(f"this conversation already has {'an image' if key == 'image' else 'a clip'} "
                             f"(the model takes one); /reset first")

    def attached(self, key: str):
        """The conversation's image or clip, if a turn still in the history carries one."""
        return next((t[key] for t in self.turns if t.get(key) is not None), None)

    def image(self):
        return self.attached("image")

    def set_system(self, text: str | None) -> None:
        self.system = text.strip() or None if text else None

    def messages(self, user: str) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns + [{"role": "user", "content": user, **self.pending}]

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
        device = next(self.model.parameters()).device
        media = {}
        for key, model_key in (("image", "pixel_values"), ("audio", "mel_values")):
            value = self.pending.get(key, self.attached(key))
            if value is not None:
                media[model_key] = value[None].to(device)
        end = self.tokenizer.token_id(END)
        tokens: list[int] = []
        shown = ""
        for new, active in stream(self.model, [prompt], self.max_new_tokens, temperature=self.temperature,
                                  top_k=self.top_k, top_p=self.top_p, stop_token_ids=[end], generator=self.generator,
                                  **media):
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
        self.pending = {}
