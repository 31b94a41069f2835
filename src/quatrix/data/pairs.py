"""Media-text pairs (an image or a clip, and its caption or transcript) as training batches,
in a seeded, resumable order: the image-text and audio-text sources of pretraining."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from quatrix.data.order import EpochOrder


def read_pairs(path: Path, key: str, suffixes: tuple[str, ...], text_name: str, builtin: str) -> list[tuple[Path, str]]:
    """(media path, text) pairs from a folder of media files each with a same-named .txt
    (`text_name`: "caption", "transcript"), or a .jsonl of {key: path, "text": ...} with
    paths relative to the file. Every problem is named with its file (and line)."""
    if not path.exists():
        raise FileNotFoundError(f"{key}-text data not found: {path} (built-in: {builtin})")
    pairs = []
    if path.is_dir():
        for media in sorted(p for p in path.iterdir() if p.suffix.lower() in suffixes):
            text = media.with_suffix(".txt")
            if not text.is_file():
                raise ValueError(f"{media} has no {text_name} file {text.name}")
            pairs.append((media, utf8(text).strip()))
    else:
        for number, line in enumerate(utf8(path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                media, text = record[key], record["text"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{path}:{number}: expected {{\"{key}\": path, \"text\": {text_name}}}") from None
            if not isinstance(text, str) or not isinstance(media, str):
                raise ValueError(f"{path}:{number}: \"{key}\" and \"text\" must be strings")
            media_path = Path(media) if Path(media).is_absolute() else path.parent / media
            if not media_path.is_file():
                raise FileNotFoundError(f"{path}:{number}: {key} not found: {media_path}")
            pairs.append((media_path, text))
    if not pairs:
        raise ValueError(f"{path} holds no {key}-text pairs ({', '.join(suffixes)} files with .txt {text_name}s)")
    return pairs


def utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {e.start})") from None


class PairLoader:
    """Batches {input_ids [B, L], labels [B, L] (-100 on padding), and the media under the
    source's key: pixel_values [B, 3, S, S] or mel_values [B, T], made by `source.stack`}.
    Each caption is tokenized between two end-of-text tokens (the first one, after the
    media, lets the model predict the caption's first word), cut to L tokens, right-padded.
    Finite sources are reshuffled every epoch; rank r takes its rows of each global batch."""

    def __init__(self, source, tokenizer, seq_len: int, batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.source, self.tokenizer, self.seq_len, self.batch_size = source, tokenizer, seq_len, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        if source.size is not None and source.size < batch_size * world_size:
            raise ValueError(f"{source.size} media-text pairs: fewer than one batch of {batch_size * world_size}")
        self.order = EpochOrder(source.size, batch_size, seed, rank, world_size) if source.size is not None else None
        self.cursor = 0  # position in an endless source

    def next_batch(self) -> dict[str, torch.Tensor]:
        if self.order is not None:
            positions = self.order.next().tolist()
        else:
            start = self.cursor + self.rank * self.batch_size
            positions = range(start, start + self.batch_size)
            self.cursor += self.batch_size * self.world_size
        examples = [self.source.example(p) for p in positions]
        ids = torch.full((self.batch_size, self.seq_len), self.tokenizer.eot_id, dtype=torch.long)
        labels = torch.full_like(ids, -100)
        for i, (_, text) in enumerate(examples):
            eot = self.tokenizer.eot_id
            tokens = ([eot] + self.tokenizer.encode(text) + [eot])[: self.seq_len]
            ids[i, : len(tokens)] = torch.tensor(tokens)
            labels[i, : len(tokens)] = ids[i, : len(tokens)]
        return {"input_ids": ids, "labels": labels, self.source.key: self.source.stack([media for media, _ in examples])}

    def state_dict(self) -> dict:
        return self.order.state_dict() if self.order is not None else {"epoch": 0, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        if self.order is not None:
            self.order.load_state_dict(state)
        else:
            self.cursor = state["cursor"]
