"""The one chat format: conversations -> token ids and a loss mask.

Every stage that sees a conversation (supervised finetuning, GRPO, evaluation, chat, a
server) renders it here, so training and inference cannot disagree about the format:

    <|system|> content <|end|> <|user|> [<|image|>] [<|audio|>] content <|end|> <|assistant|> content <|end|> ...

The loss mask is 1 on the tokens of each assistant turn's content and on the `<|end|>` that
closes it (the model must learn to stop), 0 everywhere else. Reasoning is assistant content
`<think>…</think><answer>…</answer>`; those four tags become their special tokens, while any
other special-token text inside a message (say a user typing "<|assistant|>") stays
literal text, so a message cannot forge a turn.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

ROLES = ("system", "user", "assistant")
END = "<|end|>"
REASONING_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
MEDIA = {"image": "<|image|>", "audio": "<|audio|>"}  # message key -> slot token (user turns only)
_TAG_PATTERN = re.compile("(" + "|".join(re.escape(t) for t in REASONING_TAGS) + ")")


def check_messages(messages: Any, *, need_assistant: bool = False, where: str = "conversation") -> None:
    """Raise ValueError naming the first problem (and `where`: a file and line, say)."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: expected a non-empty list of messages, got {type(messages).__name__}")
    previous = None
    for i, message in enumerate(messages):
        at = f"{where}: message {i + 1}"
        if not isinstance(message, dict):
            raise ValueError(f"{at}: expected an object with 'role' and 'content', got {type(message).__name__}")
        unknown = sorted(set(message) - {"role", "content", *MEDIA})
        if unknown:
            raise ValueError(f"{at}: unknown field(s) {', '.join(map(repr, unknown))}")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"{at}: unknown role {role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(content, str) or not content.strip():
            raise ValueError(f"{at}: 'content' must be a non-empty string")
        if role == "system" and i != 0:
            raise ValueError(f"{at}: a system message can only come first")
        if role == "assistant" and previous == "assistant":
            raise ValueError(f"{at}: two assistant turns in a row; merge them into one")
        for key in MEDIA:
            if message.get(key) is not None and role != "user":
                raise ValueError(f"{at}: only user turns can carry an {key}")
        previous = role
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        raise ValueError(f"{where}: no assistant turn, so nothing to learn from")


def render(messages: Sequence[dict], tokenizer, *, add_generation_prompt: bool = False,
           need_assistant: bool = False) -> tuple[list[int], list[int]]:
    """(ids, loss_mask), two lists of equal length. With add_generation_prompt the ids end
    with the assistant-turn opening, ready for the model to continue."""
    messages = list(messages) if isinstance(messages, tuple) else messages
    check_messages(messages, need_assistant=need_assistant)
    if add_generation_prompt and messages[-1]["role"] == "assistant":
        raise ValueError("the conversation ends with an assistant turn: there is nothing to prompt for")
    ids: list[int] = []
    mask: list[int] = []

    def add(tokens: list[int], learn: bool) -> None:
        ids.extend(tokens)
        mask.extend([int(learn)] * len(tokens))

    for message in messages:
        add([tokenizer.token_id(f"<|{message['role']}|>")], False)
        add([tokenizer.token_id(slot) for key, slot in MEDIA.items() if message.get(key) is not None], False)
        learn = message["role"] == "assistant"
        add(encode_content(message["content"], tokenizer), learn)
        add([tokenizer.token_id(END)], learn)
    if add_generation_prompt:
        add([tokenizer.token_id("<|assistant|>")], False)
    return ids, mask


def encode_content(text: str, tokenizer) -> list[int]:
    """A message's text: the reasoning tags as their special tokens, everything else literal."""
    ids: list[int] = []
    for piece in _TAG_PATTERN.split(text):
        if piece in REASONING_TAGS:
            ids.append(tokenizer.token_id(piece))
        elif piece:
            ids.extend(tokenizer.encode(piece))
    return ids
