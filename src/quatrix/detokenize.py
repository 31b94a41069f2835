"""Text from tokens as they arrive: the one incremental detokeniser of `quatrix generate`,
chat sessions and the server's scheduler.

Byte-level BPE splits a multi-byte character across tokens, so decoding token by token
would print replacement characters; decoding the whole sequence each time and handing out
only what is new and complete does not. Hand-written: it is a few lines, and the rule for
when text is safe to show (here, and the server's stop strings on top) is Quatrix's own.
"""

from __future__ import annotations

from collections.abc import Iterable

INCOMPLETE = "\ufffd"  # what a decoder shows for a character whose remaining bytes are still to come


class IncrementalDecoder:
    """decoder.push(token) -> the new text that is safe to show ("" while a character is
    incomplete); decoder.flush() -> whatever is left. Tokens in `hidden` (role and
    media-slot tokens) count but are never shown."""

    def __init__(self, tokenizer, hidden: Iterable[int] = ()):
        self.tokenizer = tokenizer
        self.hidden = frozenset(hidden)
        self.tokens: list[int] = []
        self.sent = 0  # characters of text() already handed out

    def add(self, token: int) -> None:
        self.tokens.append(token)

    def text(self) -> str:
        """The whole text so far (it may end in an incomplete character)."""
        return self.tokenizer.decode([t for t in self.tokens if t not in self.hidden])

    def take(self, text: str, end: int | None = None) -> str:
        """Hand out text[sent:end] (to the end by default) and remember it was sent."""
        end = len(text) if end is None else end
        piece = text[self.sent : end]
        self.sent = max(self.sent, end)
        return piece

    def push(self, token: int) -> str:
        self.add(token)
        text = self.text()
        return "" if text.endswith(INCOMPLETE) else self.take(text)

    def flush(self) -> str:
        return self.take(self.text())
