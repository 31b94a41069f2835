"""Every reasoning-gym task by its own name, with the task's own answer checker.

reasoning-gym datasets are finite and indexed (item i is made from the dataset's seed and
i); the streams here read them in blocks of BLOCK items, each block its own dataset with a
seed derived from (task seed, split, block), so a stream is endless and random access stays
cheap. Worked solutions come from the item's metadata where the task has them
(gsm_symbolic's `answer_cot`, which ends in "#### N": that line is the answer, not the
reasoning)."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Any

from quatrix.tasks.base import Item, Task

BLOCK = 4096
_SPLITS = {"train": 0, "eval": 1}


def reasoning_gym_names() -> list[str]:
    try:
        import reasoning_gym
    except ImportError:
        raise FileNotFoundError("reasoning-gym tasks need `pip install reasoning-gym==0.1.25`") from None
    return sorted(reasoning_gym.factory.DATASETS)


class ReasoningGymTask(Task):
    def __init__(self, name: str, seed: int = 0, **options: Any):
        self.name, self.seed, self.options = name, seed, options
        try:
            self._dataset(0, 0)  # builds block 0 now, so a bad option fails here, clearly
        except (TypeError, ValueError, AssertionError, KeyError) as e:
            raise ValueError(f"task {name}: bad options {options}: {e or type(e).__name__}") from None

    @lru_cache(maxsize=4)
    def _dataset(self, split: int, block: int):
        import reasoning_gym

        digest = hashlib.blake2b(f"{self.seed}/{split}/{block}".encode(), digest_size=4).digest()
        return reasoning_gym.create_dataset(self.name, size=BLOCK, seed=int.from_bytes(digest, "little"),
                                            **self.options)

    def generate(self, split: str, index: int) -> Item:
        dataset = self._dataset(_SPLITS[split], index // BLOCK)
        entry = dataset[index % BLOCK]
        return Item(question=entry["question"], answer=str(entry["answer"]), entry=entry,
                    solution=_solution(entry.get("metadata") or {}))

    def score(self, answer: str | None, item: Item) -> float:
        if answer is None or not answer.strip():
            return 0.0
        dataset = self._dataset(_SPLITS["train"], 0)
        try:
            score = float(dataset.score_answer(answer=answer.strip(), entry=item.entry))
        except Exception:  # a checker may choke on odd text; odd text is simply wrong
            return 0.0
        return min(max(score, 0.0), 1.0)


def _solution(metadata: dict) -> str | None:
    cot = metadata.get("answer_cot")
    if not isinstance(cot, str) or not cot.strip():
        return None
    lines = [line for line in cot.strip().splitlines() if not line.lstrip().startswith("####")]
    return "\n".join(lines).strip() or None
