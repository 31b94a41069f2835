"""What every task offers: an endless training stream and a fixed held-out set, disjoint by
construction, each item rendered into the one chat format and scored by the task's checker."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from torch import Tensor

HELD_OUT_EVERY = 8  # 1 question in 8 (by hash) belongs to the held-out set
REASONING_INSTRUCTION = ("Think step by step inside <think> </think>, then give only the final answer inside "
                         "<answer> </answer>.")


@dataclass
class Item:
    """One question. `entry` is whatever the task's checker needs; `image` a [3, S, S]
    tensor for visual tasks, `audio` a [T] waveform for spoken ones; `solution` a worked
    solution where the task has one."""

    question: str
    answer: str
    entry: Any = None
    image: Tensor | None = None
    audio: Tensor | None = None
    solution: str | None = None
    kind: str = ""  # the question's type, where the task has several (visual QA)
    key: str = ""  # what the held-out split hashes: the question, plus the scene for visual tasks

    def __post_init__(self) -> None:
        self.key = self.key or self.question


def held_out(key: str) -> bool:
    """Whether a question (its key) belongs to the held-out set: a stable hash (not Python's salted one)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % HELD_OUT_EVERY == 0


def pool_of(key: str, pools: int) -> int:
    """Which of `pools` disjoint training pools a question belongs to (a second, independent hash)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8, person=b"quatrix-pool").digest()
    return int.from_bytes(digest, "little") % pools


def parse_pool(value) -> tuple[int, int]:
    """'1/2' -> (1, 2): the second of two pools."""
    text = str(value)
    k, sep, n = text.partition("/")
    if not (sep and k.isdigit() and n.isdigit() and 0 <= int(k) < int(n)):
        raise ValueError(f"pool={text!r}: expected K/N with 0 <= K < N, e.g. pool=0/2")
    return int(k), int(n)


class Task:
    """Subclasses give `name`, `generate(split, index) -> Item` (deterministic in the seed,
    split and index) and `score(answer, item) -> float in [0, 1]`; `media` names what the
    model must take besides text ("image", "audio")."""

    name: str
    media: tuple[str, ...] = ()
    pool: tuple[int, int] | None = None  # (K, N): train only on the K-th of N disjoint pools of questions

    def is_held_out(self, item: Item) -> bool:
        """Whether the item belongs to the held-out set (by default a hash of its key)."""
        return held_out(item.key)

    def generate(self, split: str, index: int) -> Item:
        raise NotImplementedError

    def score(self, answer: str | None, item: Item) -> float:
        raise NotImplementedError

    def score_text(self, completion: str, item: Item) -> float:
        """The checker applied to the text inside the completion's <answer>…</answer>."""
        from quatrix.tasks.rewards import extract_answer

        return self.score(extract_answer(completion), item)

    def format_score(self, completion: str) -> float:
        """1.0 when the completion has the task's answer format (by default the reasoning
        format, <think>…</think><answer>…</answer>), else 0.0."""
        from quatrix.tasks.rewards import format_reward

        return format_reward(completion)

    def train_item(self, index: int) -> tuple[Item, int]:
        """The first training item at raw index >= `index`, and the raw index after it
        (held-out questions are skipped). A loader keeps that index as its position."""
        for _ in range(100 * HELD_OUT_EVERY * (self.pool[1] if self.pool else 1)):
            item = self.generate("train", index)
            index += 1
            if not self.is_held_out(item) and (self.pool is None or pool_of(item.key, self.pool[1]) == self.pool[0]):
                return item, index
        raise ValueError(f"task {self.name}: no training question in {100 * HELD_OUT_EVERY} tries; "
                           "its question space is too small to split")

    def train_answers(self, n: int) -> list[tuple[str, str]]:
        """(kind, answer) of the first n training items: what the majority baseline counts.
        Tasks whose items are costly to make (audio) give the answers without the media."""
        answers, index = [], 0
        for _ in range(n):
            item, index = self.train_item(index)
            answers.append((item.kind, item.answer))
        return answers

    def eval_items(self, n: int, at_most: bool = False) -> list[Item]:
        """The first n distinct held-out questions (the same n for every run with this task
        and seed). A task with fewer raises, or with `at_most` gives all it has."""
        items: list[Item] = []
        questions: set[str] = set()
        index = 0
        while len(items) < n:
            item = self.generate("eval", index)
            index += 1
            if self.is_held_out(item) and item.key not in questions:
                items.append(item)
                questions.add(item.key)
            if index > 1000 * HELD_OUT_EVERY + 100 * n:
                if at_most and items:
                    return items
                raise ValueError(f"task {self.name}: only {len(items)} held-out questions found; its question "
                                   "space is too small (make it harder)")
        return items

    def prompt(self, item: Item) -> list[dict]:
        """The conversation to answer: the reasoning instruction, then the question."""
        user = {"role": "user", "content": item.question}
        for key in ("image", "audio"):
            if getattr(item, key) is not None:
                user[key] = getattr(item, key)
        return [{"role": "system", "content": REASONING_INSTRUCTION}, user]

    def target(self, item: Item) -> str:
        """The assistant turn SFT learns: the worked solution where there is one, else the
        answer alone, in the reasoning format."""
        return f"<think>{item.solution or ''}</think><answer>{item.answer}</answer>"

    def conversation(self, item: Item) -> list[dict]:
        return [*self.prompt(item), {"role": "assistant", "content": self.target(item)}]
