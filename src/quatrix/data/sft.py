"""Conversations for supervised finetuning, rendered by the one chat format into
(ids, loss mask) examples and served as right-padded batches.

Sources (`quatrix sft --data SOURCE`):
  PATH.jsonl         one {"messages": [...]} per line (a user turn may carry "image" or
                     "audio": a path, relative to the file)
  chitchat           the chitchat-dataset's conversations, cut into runs of up to six turns
                     (the first speaker is the user)
  task:NAME[:k=v,..] an endless stream of a task's training items (quatrix.tasks), each a
                     conversation ending in its worked solution or answer
  text:CORPUS        plain-text windows (any pretraining --data; quatrix.train.sft serves them)

A conversation is never split: one longer than --seq-len is skipped and counted (finite
sources report the count when they load; task streams in the metrics, as `skipped`).
1 conversation in 20 of a finite source (by a hash of its text) is held out for validation;
a task's validation conversations are its held-out items.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from quatrix.chat import render
from quatrix.data.conversations import read_conversations
from quatrix.data.order import EpochOrder
from quatrix.media import MODALITIES, batch_media

VALIDATION_EVERY = 20
TEXT = "text:"  # a plain-text source: `text:CORPUS`, served by quatrix.train.sft
CHITCHAT_TURNS = 6


@dataclass
class Example:
    ids: list[int]
    mask: list[int]
    image: object = None  # a [3, S, S] tensor, an image path, or None
    audio: object = None  # a [T] waveform at the model's sample rate, an audio path, or None


def render_example(messages: list[dict], tokenizer) -> Example:
    ids, mask = render(messages, tokenizer, need_assistant=True)
    media = {}
    for key in MODALITIES:
        found = [m[key] for m in messages if m.get(key) is not None]
        if len(found) > 1:
            raise ValueError(f"a conversation can carry at most one {key} (the model takes one {key} prefix)")
        media[key] = found[0] if found else None
    return Example(ids, mask, **media)


def collate(examples: list[Example], pad_id: int, config=None) -> dict[str, torch.Tensor]:
    """Right-padded input_ids and labels [B, L] (L = the longest example; labels -100 off the
    loss mask and on padding), and pixel_values [B, 3, S, S] / mel_values [B, T] (clips
    padded with silence) when the examples carry images / audio. Paths are read here, at the
    model `config`'s image size and sample rate."""
    L = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), L), pad_id, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    for i, e in enumerate(examples):
        row = torch.tensor(e.ids)
        ids[i, : len(e.ids)] = row
        labels[i, : len(e.ids)] = torch.where(torch.tensor(e.mask, dtype=torch.bool), row, -100)
    batch = {"input_ids": ids, "labels": labels}
    for name in MODALITIES:
        if _carrying(examples, name):
            batch[MODALITIES[name].model_input] = batch_media(name, [getattr(e, name) for e in examples], config)
    return batch


def _carrying(examples: list[Example], key: str) -> bool:
    carried = [getattr(e, key) is not None for e in examples]
    if any(carried) and not all(carried):
        raise ValueError(f"a batch mixes conversations with and without {key}")
    return any(carried)


def is_validation(messages: list[dict]) -> bool:
    text = json.dumps(messages, sort_keys=True, default=str)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") % VALIDATION_EVERY == 0


def chitchat_conversations() -> list[list[dict]]:
    """The chitchat corpus as user/assistant conversations of up to CHITCHAT_TURNS turns."""
    from quatrix.data.text import chitchat_dialogues

    conversations = []
    for turns in chitchat_dialogues():
        for start in range(0, len(turns) - 1, CHITCHAT_TURNS):
            run = [t for t in turns[start : start + CHITCHAT_TURNS] if t.strip()]
            if len(run) >= 2:
                conversations.append([{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(run)])
    return conversations


class ConversationSource:
    """A finite list of conversations (a file, chitchat) or a task's endless stream."""

    def __init__(self, spec: str, tokenizer, seq_len: int, seed: int = 0, log=None, config=None):
        self.spec, self.tokenizer, self.seq_len, self.seed = spec, tokenizer, seq_len, seed
        log = log or (lambda message: print(message, file=sys.stderr))
        self.task = None
        if spec.startswith("task:"):
            from quatrix.tasks import task_from_spec

            self.task = task_from_spec(spec[len("task:"):], seed, config)
            return
        if spec == "chitchat":
            conversations = chitchat_conversations()
            resolved = conversations
        elif Path(spec).suffix == ".jsonl" or Path(spec).is_file():
            conversations = read_conversations(spec)
            resolved = [_resolve_media(c, Path(spec).parent) for c in conversations]
        else:
            raise FileNotFoundError(f"SFT data not found: {spec} (a .jsonl file, chitchat, or task:NAME)")
        train, val, skipped = [], [], 0
        for messages, loaded in zip(conversations, resolved):  # the split hashes the file's text, not local paths
            example = render_example(loaded, tokenizer)
            if len(example.ids) > seq_len:
                skipped += 1
                continue
            (val if is_validation(messages) else train).append(example)
        if skipped:
            log(f"sft: {spec}: skipped {skipped} of {len(conversations)} conversations longer than {seq_len} tokens")
        if not train and not val:
            raise ValueError(f"{spec}: no conversation fits in {seq_len} tokens (raise --seq-len)")
        if not train:  # a handful of conversations, all hashed into the held-out share: train on them anyway
            log(f"sft: {spec}: too few conversations to hold any out; validating on training conversations")
            train = val
        for key in MODALITIES:
            if len({getattr(e, key) is not None for e in train + val}) > 1:
                raise ValueError(f"{spec}: either every conversation carries {key} or none does")
        self.train, self.val, self.skipped = train, val, skipped

    def validation(self, n: int, at_most: bool = False) -> list[Example]:
        """Up to n held-out conversations; a task with fewer held-out questions raises, or
        with `at_most` gives all it has."""
        if self.task is None:
            return self.val[:n]
        examples = [render_example(self.task.conversation(item), self.tokenizer)
                    for item in self.task.eval_items(n, at_most)]
        return [e for e in examples if len(e.ids) <= self.seq_len]


    def media(self) -> set[str]:
        """Which media ("image", "audio") this source's conversations carry."""
        if self.task is not None:
            return set(self.task.media)
        return {key for key in MODALITIES if any(getattr(e, key) is not None for e in self.train[:1])}


def _resolve_media(messages: list[dict], root: Path) -> list[dict]:
    out = []
    for m in messages:
        for key in MODALITIES:
            if isinstance(m.get(key), str):
                path = Path(m[key]) if Path(m[key]).is_absolute() else root / m[key]
                if not path.is_file():
                    raise FileNotFoundError(f"{key} file not found: {path}")
                m = {**m, key: str(path)}
        out.append(m)
    return out


class SFTLoader:
    """Batches of one source in a seeded, resumable order. Finite sources are reshuffled
    every epoch and rank r takes its rows of each global batch; a task stream gives rank r
    its own range of item indices. The position is plain data (`state_dict`)."""

    RANK_STRIDE = 1 << 40  # task items per rank: the ranks' ranges never meet

    def __init__(self, source: ConversationSource, batch_size: int, pad_id: int, config=None,
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        self.source, self.batch_size, self.pad_id, self.config = source, batch_size, pad_id, config
        if source.task is None and len(source.train) < batch_size * world_size:
            raise ValueError(f"{source.spec}: {len(source.train)} training conversations, fewer than one batch of "
                             f"{batch_size * world_size}")
        self.order = EpochOrder(len(source.train), batch_size, seed, rank, world_size) if source.task is None else None
        self.index, self.skipped = rank * self.RANK_STRIDE, 0  # a task stream's position

    def next_batch(self) -> dict[str, torch.Tensor]:
        if self.order is None:
            examples = self._task_examples()
        else:
            examples = [self.source.train[int(i)] for i in self.order.next()]
        return collate(examples, self.pad_id, self.config)

    def _task_examples(self) -> list[Example]:
        examples = []
        for _ in range(100 * self.batch_size):
            item, self.index = self.source.task.train_item(self.index)
            example = render_example(self.source.task.conversation(item), self.source.tokenizer)
            if len(example.ids) > self.source.seq_len:
                self.skipped += 1
                continue
            examples.append(example)
            if len(examples) == self.batch_size:
                return examples
        raise ValueError(f"{self.source.spec}: almost every item is longer than {self.source.seq_len} tokens "
                         "(raise --seq-len or make the task easier)")

    def state_dict(self) -> dict:
        order = self.order.state_dict() if self.order is not None else {}
        return {**order, "index": self.index, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        if self.order is not None:
            self.order.load_state_dict(state)
        self.index, self.skipped = state["index"], state["skipped"]
