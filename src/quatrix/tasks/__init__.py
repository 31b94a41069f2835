"""Tasks with verifiable answers, for supervised finetuning, GRPO and evaluation.

    task = load_task("chain_sum", seed=0, max_terms=3, max_digits=1)   # any reasoning-gym task
    task = load_task("visual_qa")                                     # questions about CLEVR-style scenes
    task = load_task("transcribe", data="spoken-digits")              # speech recognition, unseen voices
    item = task.train_item(0); messages = task.prompt(item); task.score("15", item)

Every task splits its items into a training stream and a held-out set by a hash of the
question (1 in `HELD_OUT_EVERY` questions is held out), so no held-out question is ever
trained on, whatever the seeds and however long a run goes.
"""

from __future__ import annotations

import difflib
from typing import Any

from quatrix.media import check_encoder
from quatrix.specs import parse_spec
from quatrix.tasks.base import HELD_OUT_EVERY, REASONING_INSTRUCTION, Item, Task, parse_pool  # noqa: F401

VISUAL_QA = "visual_qa"
TRANSCRIBE = "transcribe"
OWN_TASKS = (VISUAL_QA, TRANSCRIBE)  # Quatrix's own tasks, beside reasoning-gym's


def task_names() -> list[str]:
    """Every task name load_task accepts: reasoning-gym's whole registry, visual_qa, transcribe."""
    from quatrix.tasks.reasoning import reasoning_gym_names

    return sorted([*reasoning_gym_names(), *OWN_TASKS])


def load_task(name: str, *, seed: int = 0, pool: str | None = None, **options: Any) -> Task:
    """The task called `name` (a reasoning-gym dataset, visual_qa or transcribe), configured
    by `options` (the dataset's own config fields, e.g. max_terms=3 for chain_sum).

    pool="K/N" keeps only the K-th of N disjoint pools of training questions (by a hash
    independent of the held-out split): SFT on pool 0/2 and GRPO on pool 1/2 means GRPO
    trains on questions SFT never saw. The held-out set is the same whatever the pool."""
    task = _load_task(name, seed=seed, **options)
    if pool is not None:
        task.pool = parse_pool(pool)
    return task


def _load_task(name: str, *, seed: int, **options: Any) -> Task:
    if name == VISUAL_QA:
        from quatrix.tasks.visual_qa import VisualQATask

        return VisualQATask(seed=seed, **options)
    if name == TRANSCRIBE:
        from quatrix.tasks.transcribe import TranscribeTask

        try:
            return TranscribeTask(seed=seed, **options)
        except TypeError as e:
            raise ValueError(f"task transcribe: {e}") from None
    from quatrix.tasks.reasoning import ReasoningGymTask, reasoning_gym_names

    names = reasoning_gym_names()
    if name not in names:
        close = difflib.get_close_matches(name, [*names, *OWN_TASKS], n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else \
            f" ({len(names) + len(OWN_TASKS)} tasks: see `quatrix tasks`)"
        raise ValueError(f"unknown task {name!r}{hint}")
    return ReasoningGymTask(name, seed=seed, **options)


def parse_task_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """'chain_sum:max_terms=3,max_digits=1' -> ('chain_sum', {'max_terms': 3, 'max_digits': 1})."""
    return parse_spec(spec, "task spec")


def task_from_spec(spec: str, seed: int = 0, config=None) -> Task:
    """The task a spec names. With a model `config`, visual_qa draws its scenes at the
    model's image size, and transcribe its clips at the model's sample rate and length limit,
    unless the spec says otherwise."""
    name, options = parse_task_spec(spec)
    if name == VISUAL_QA and config is not None:
        check_encoder(config, "image", f"task {VISUAL_QA}")
        options.setdefault("image_size", config.image_size)
    if name == TRANSCRIBE and config is not None:
        check_encoder(config, "audio", f"task {TRANSCRIBE}")
        options.setdefault("sample_rate", config.sample_rate)
        options.setdefault("max_seconds", config.audio_max_seconds)
    return load_task(name, seed=seed, **options)
