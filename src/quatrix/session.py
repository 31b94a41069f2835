"""A multi-turn conversation with a model: history, the one chat format, streamed replies;
and `chat_loop`, the terminal (or pipe) front end `quatrix chat` runs."""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Iterator

import torch

from quatrix.chat import END, render
from quatrix.detokenize import IncrementalDecoder
from quatrix.engine import stream
from quatrix.media import MODALITIES, load_media, model_inputs, modality


class ChatSession:
    """Keeps the conversation; `reply(text)` streams the assistant's answer as text pieces
    and adds both turns to the history. When the history no longer fits the model's
    context beside max_new_tokens, the oldest exchanges are dropped (the system message
    stays; an image or clip goes with the turn that brought it). `attach_image(path)` and
    `attach_audio(path)` send an image or a clip with the next message, for models with
    vision or audio."""

    def __init__(self, model, tokenizer, *, system: str | None = None, max_new_tokens: int = 128,
                 temperature: float = 0.7, top_k: int = 0, top_p: float = 0.95, seed: int = 0,
                 compile: bool = False):
        if max_new_tokens >= model.config.max_seq_len:
            raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt "
                             f"(max_seq_len={model.config.max_seq_len})")
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.temperature, self.top_k, self.top_p = max_new_tokens, temperature, top_k, top_p
        self.compile = compile  # a compiled static-shape decode step (quatrix.static_decode)
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
        self.attach("image", path)

    def attach_audio(self, path) -> None:
        """Send an audio file (WAV, FLAC; any sample rate) with the next message; one clip
        per conversation, as for images."""
        self.attach("audio", path)

    def attach(self, name: str, path) -> None:
        """Send an image or clip (`name`, a key of quatrix.media.MODALITIES) with the next message."""
        encoder = modality(name).encoder
        if getattr(self.model, encoder) is None:
            raise ValueError(f"this model has no {encoder} encoder, so it cannot take {modality(name).a_noun}")
        self._check_free(name)
        self.pending[name] = load_media(name, path, self.model.config)

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
        for name in MODALITIES:
            value = self.pending.get(name, self.attached(name))
            if value is not None:
                media[name] = value[None].to(device)
        end = self.tokenizer.token_id(END)
        decoder = IncrementalDecoder(self.tokenizer)
        for new, active in stream(self.model, [prompt], self.max_new_tokens, temperature=self.temperature,
                                  top_k=self.top_k, top_p=self.top_p, stop_token_ids=[end], generator=self.generator,
                                  compile=self.compile, **model_inputs(media)):
            if not bool(active[0]) or int(new[0]) == end:
                break
            piece = decoder.push(int(new[0]))
            if piece:
                yield piece
        rest = decoder.flush()
        if rest:
            yield rest
        text = decoder.text()
        self.turns += [self.messages(user)[-1], {"role": "assistant", "content": text.strip() or "…"}]
        self.pending = {}


HELP = ("quatrix chat: /reset clears the conversation, /system TEXT sets the system message, /image PATH and "
        "/audio PATH send an image or a clip with the next message, /quit leaves")


def chat_loop(session: ChatSession, stdin=None, stdout=None, autocast=None) -> int:
    """Multi-turn chat over a terminal or a pipe: a line is a user turn; /reset, /system TEXT,
    /image PATH, /audio PATH, /quit. `autocast` (a context factory) wraps each reply."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    interactive = stdin.isatty()
    say = functools.partial(print, file=stdout, flush=True)
    if interactive:
        say(HELP)
    while True:
        if interactive:
            say("you> ", end="")
        line = stdin.readline()
        if not line:
            return 0
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return 0
        if line.startswith("/"):
            say(run_command(session, line))
            continue
        if interactive:
            say("quatrix> ", end="")
        try:
            with autocast() if autocast else contextlib.nullcontext():
                for piece in session.reply(line):
                    say(piece, end="")
        except ValueError as e:
            say(f"(error: {e})", end="")
        say()


def run_command(session: ChatSession, line: str) -> str:
    """One slash command of the chat loop; the line to show for it."""
    command = line.split()[0]
    if command == "/reset" and line == "/reset":
        session.reset()
        return "(conversation cleared)"
    if command == "/system" or line.startswith("/system"):
        session.set_system(line[len("/system"):])
        session.reset()
        return f"(system message {'set' if session.system else 'cleared'}; conversation cleared)"
    if command in ("/image", "/audio"):
        try:
            session.attach(command[1:], line[len(command):].strip())
            return f"({command[1:]} attached to your next message)"
        except (ValueError, FileNotFoundError) as e:
            return f"(error: {e})"
    return f"(unknown command {command}; try /reset, /system TEXT, /image PATH, /audio PATH, /quit)"
