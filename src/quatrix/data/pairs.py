"""Media-text pairs (an image or a clip, and its caption or transcript) as training batches,
in a seeded, resumable order: the image-text and audio-text sources of pretraining."""

from __future__ import annotations

import torch

from quatrix.data.order import EpochOrder


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
