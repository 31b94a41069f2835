"""Tokenizers behind one small interface: GPT-2 BPE offline (tiktoken), or a byte-level BPE
trained on the user's corpus (Hugging Face `tokenizers`).

Both carry the same special tokens, appended after the base vocabulary: end of text, chat
roles, reasoning and answer tags, and image / audio slots. The GPT-2 ranks file comes from
the `openai-whisper` package (`pip install --no-deps openai-whisper`), found on disk
without importing whisper, so nothing is fetched at run time.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Sequence

from quatrix.io import atomic_write_text

EOT = "<|endoftext|>"
SPECIAL_TOKENS = (
    EOT, "<|system|>", "<|user|>", "<|assistant|>", "<|end|>",
    "<think>", "</think>", "<answer>", "</answer>", "<|image|>", "<|audio|>",
)
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
META_NAME = "tokenizer_meta.json"
BPE_NAME = "tokenizer.json"


class Tokenizer:
    """encode / decode / vocab_size / special ids, whatever the backend."""

    kind: str

    def __init__(self, special: dict[str, int], vocab_size: int):
        self.special = special  # name -> id
        self.vocab_size = vocab_size

    @property
    def eot_id(self) -> int:
        return self.special[EOT]

    def token_id(self, name: str) -> int:
        if name not in self.special:
            raise ValueError(f"unknown special token {name!r}; known: {', '.join(self.special)}")
        return self.special[name]

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def save(self, directory: str | Path) -> None:
        raise NotImplementedError


class GPT2Tokenizer(Tokenizer):
    """GPT-2's BPE (ids identical to GPT-2's: "Hello world" -> [15496, 995]), plus our
    special tokens from id 50256 (<|endoftext|>, as GPT-2) upwards."""

    kind = "gpt2"

    def __init__(self):
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe

        ranks = load_tiktoken_bpe(str(gpt2_ranks_path()))  # 50,256 merges
        special = {name: len(ranks) + i for i, name in enumerate(SPECIAL_TOKENS)}
        self._enc = tiktoken.Encoding("quatrix-gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                      special_tokens=special)
        super().__init__(special, len(ranks) + len(SPECIAL_TOKENS))

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        if allow_special:
            return self._enc.encode(text, allowed_special="all")
        return self._enc.encode_ordinary(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self._enc.decode(list(ids))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(texts)

    def save(self, directory: str | Path) -> None:
        atomic_write_text(Path(directory) / META_NAME, json.dumps({"kind": "gpt2", "vocab_size": self.vocab_size}))


class BPETokenizer(Tokenizer):
    """A byte-level BPE trained with `tokenizers`; special tokens take ids 0.."""

    kind = "bpe"

    def __init__(self, tokenizer):
        self._tok = tokenizer
        special = {name: tokenizer.token_to_id(name) for name in SPECIAL_TOKENS}
        missing = [n for n, i in special.items() if i is None]
        if missing:
            raise ValueError(f"tokenizer lacks the special tokens {missing}; train it with `quatrix tokenizer train`")
        super().__init__(special, tokenizer.get_vocab_size())

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        if allow_special:
            return self._tok.encode(text).ids
        # Keep special-token text literal: encode it piecewise around the specials.
        return [i for piece in _split_specials(text) for i in self._tok.encode(piece, add_special_tokens=False).ids]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if any(name in t for t in texts for name in SPECIAL_TOKENS):
            return [self.encode(t) for t in texts]
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        atomic_write_text(directory / BPE_NAME, self._tok.to_str())
        atomic_write_text(directory / META_NAME, json.dumps({"kind": "bpe", "vocab_size": self.vocab_size}))


def _split_specials(text: str) -> list[str]:
    """Break text so that no piece is exactly a special token's string (they stay plain text)."""
    pieces = [text]
    for name in SPECIAL_TOKENS:
        pieces = [q for p in pieces for q in _split_keep(p, name)]
    return pieces


def _split_keep(text: str, sep: str) -> list[str]:
    if sep not in text:
        return [text]
    parts = text.split(sep)
    out: list[str] = []
    for i, part in enumerate(parts):
        if part:
            out.append(part)
        if i < len(parts) - 1:
            out += [sep[:1], sep[1:]]  # "<" then "|endoftext|>": never matched as the special
    return out


def gpt2_ranks_path() -> Path:
    """whisper/assets/gpt2.tiktoken, located without importing whisper."""
    spec = importlib.util.find_spec("whisper")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the GPT-2 BPE ranks come from the openai-whisper package: pip install --no-deps openai-whisper"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "assets" / "gpt2.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"GPT-2 ranks file missing from the openai-whisper package: {path}")
    return path


def train_tokenizer(texts, vocab_size: int, out: str | Path | None = None) -> BPETokenizer:
    """Train a byte-level BPE on an iterable of strings; save it to `out` if given."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    minimum = 256 + len(SPECIAL_TOKENS)
    if vocab_size <= minimum:
        raise ValueError(f"vocab_size must exceed {minimum} (256 bytes + {len(SPECIAL_TOKENS)} special tokens)")
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    result = BPETokenizer(tok)
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        result.save(out)
    return result


def load_tokenizer(name_or_dir: str | Path) -> Tokenizer:
    """"gpt2", or a directory written by `Tokenizer.save` (a trained BPE or a checkpoint)."""
    if str(name_or_dir) == "gpt2":
        return GPT2Tokenizer()
    directory = Path(name_or_dir)
    if not directory.is_dir():
        raise FileNotFoundError(f"tokenizer not found: {directory} (use 'gpt2' or a tokenizer directory)")
    meta_path = directory / META_NAME
    if not meta_path.is_file():
        raise FileNotFoundError(f"{directory} holds no tokenizer ({META_NAME} is missing)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_path} is corrupt: {e}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path} is corrupt: expected a JSON object with a 'kind'")
    if meta.get("kind") == "gpt2":
        return GPT2Tokenizer()
    if meta.get("kind") == "bpe":
        from tokenizers import Tokenizer as HFTokenizer

        try:
            return BPETokenizer(HFTokenizer.from_file(str(directory / BPE_NAME)))
        except Exception as e:  # tokenizers raises plain Exception subclasses for bad files
            raise ValueError(f"{directory / BPE_NAME} could not be loaded: {e}") from None
    raise ValueError(f"{meta_path}: unknown tokenizer kind {meta.get('kind')!r}")


def has_tokenizer(directory: str | Path) -> bool:
    return (Path(directory) / META_NAME).is_file()
