"""Rewards for GRPO, read off a completion's text (docs/design.md §6):

  correct  the task's own checker applied to the text inside <answer>…</answer> (the
           first such pair); 0 when there is no answer pair. In [0, 1]; some
           reasoning-gym checkers give partial credit.
  format   1 when the completion is exactly <think>…</think><answer>…</answer> (each tag
           once, in that order, only whitespace around them), else 0.
  length   -(completion tokens / max_new_tokens): in [-1, 0], a gentle push towards short
           answers; off (weight 0) unless asked for.

The reward is the weighted sum, weights from `--reward-weights correct=1,format=0.1`.
`accuracy` counts completions the checker scores 1.0 (full credit).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

REWARDS = ("correct", "format", "length")
DEFAULT_WEIGHTS = {"correct": 1.0, "format": 0.1, "length": 0.0}
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_FORMAT = re.compile(r"\s*<think>((?:(?!<think>|</think>|<answer>|</answer>).)*)</think>\s*"
                     r"<answer>((?:(?!<think>|</think>|<answer>|</answer>).)*)</answer>\s*", re.DOTALL)


def extract_answer(completion: str) -> str | None:
    """The text inside the first <answer>…</answer>, stripped; None if there is none."""
    match = _ANSWER.search(completion)
    return match.group(1).strip() if match else None


def format_reward(completion: str) -> float:
    return float(_FORMAT.fullmatch(completion) is not None)


def length_reward(tokens: int, max_new_tokens: int) -> float:
    return -min(tokens / max_new_tokens, 1.0)


def parse_reward_weights(spec: str) -> dict[str, float]:
    """'correct=1,format=0.1' -> weights for every reward (unnamed ones keep their defaults)."""
    weights = dict(DEFAULT_WEIGHTS)
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, value = part.partition("=")
        if not sep or name.strip() not in REWARDS:
            raise ValueError(f"--reward-weights: expected NAME=WEIGHT with NAME in {', '.join(REWARDS)}, got {part!r}")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--reward-weights: weight of {name.strip()} is not a number: {value!r}") from None
    if not all(w == w and abs(w) != float("inf") for w in weights.values()):
        raise ValueError("--reward-weights: weights must be finite numbers")
    return weights


@dataclass
class Scored:
    """One completion's rewards."""

    correct: float
    format: float
    length: float
    reward: float

    @property
    def solved(self) -> bool:
        return self.correct >= 1.0


def score_completion(task, item, completion: str, tokens: int, max_new_tokens: int,
                     weights: dict[str, float] = DEFAULT_WEIGHTS) -> Scored:
    parts = {"correct": task.score_text(completion, item), "format": task.format_score(completion),
             "length": length_reward(tokens, max_new_tokens)}
    return Scored(**parts, reward=sum(weights[name] * value for name, value in parts.items()))
