"""Accuracy on a task's held-out items: greedy by default, pass@k on request, with the
baselines that say what the accuracy means (majority answer, text only, chance).

Completions come from quatrix.tasks.sampling, as GRPO's rollouts do, so evaluation and
training generate the same way."""

from __future__ import annotations

import math

import torch

from quatrix.tasks.sampling import complete
from quatrix.tasks.rewards import DEFAULT_WEIGHTS, Scored, score_completion


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% confidence interval of a proportion (Wilson score; sound near 0 and 1)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """McNemar's exact test of two models on the same items, from the items only the first
    and only the second gets right: the two-sided p-value of a fair coin over those
    disagreements (the items both get right or both wrong carry no information)."""
    m = only_a + only_b
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(min(only_a, only_b) + 1)) / 2**m
    return min(1.0, 2 * tail)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al., 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def majority_answers(task, n: int = 2000) -> dict[str, str]:
    """The most frequent answer per question kind ("" for a task without kinds) among the
    first n training items: the answer a model that ignores the question's content would give."""
    from collections import Counter

    counts: dict[str, Counter] = {}
    for kind, answer in task.train_answers(n):
        counts.setdefault(kind, Counter())[answer] += 1
    return {kind: c.most_common(1)[0][0] for kind, c in counts.items()}


def baselines(model, tokenizer, task, items, *, batch_size: int, max_new_tokens: int) -> dict:
    """What the answers would score without the model's skill: the majority answer of each
    kind, and, for tasks with images or audio, the same model with every image or clip
    replaced by zeros; for transcription also a random training transcript (chance), and
    the error rates of all three."""
    majority = majority_answers(task)
    guesses = [majority.get(item.kind, "") for item in items]
    guess = [task.score(g, item) >= 1.0 for g, item in zip(guesses, items)]
    out = {"majority_accuracy": _mean(guess), "majority_answers": majority}
    transcribes = getattr(task, "transcribes", False)
    if transcribes:
        from quatrix.tasks.transcribe import random_transcripts

        out.update(_error_rates("majority", items, guesses))
        chance = random_transcripts(task, len(items))
        out["chance_accuracy"] = _mean(task.score(c, item) >= 1.0 for c, item in zip(chance, items))
        out.update(_error_rates("chance", items, chance))
    if task.media:
        solved, texts = [], []
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            chunk_texts = complete(model, tokenizer, task, chunk, max_new_tokens=max_new_tokens, blank_media=True).texts
            solved += [task.score_text(text, item) >= 1.0 for text, item in zip(chunk_texts, chunk)]
            texts += chunk_texts
        out["text_only_accuracy"] = _mean(solved)
        if transcribes:
            out.update(_error_rates("text_only", items, texts))
    else:
        solved = None
    kinds = sorted({item.kind for item in items if item.kind})
    if kinds:
        out["majority_by_kind"] = {k: _mean(g for g, it in zip(guess, items) if it.kind == k) for k in kinds}
        if solved is not None:
            out["text_only_by_kind"] = {k: _mean(s for s, it in zip(solved, items) if it.kind == k) for k in kinds}
    return out


@torch.no_grad()
def evaluate_task(model, tokenizer, task, n: int, *, batch_size: int = 32, max_new_tokens: int = 64,
                  pass_k: int | None = None, samples: int | None = None, temperature: float = 1.0,
                  seed: int = 0, with_baselines: bool = False, at_most: bool = False) -> dict:
    """Greedy accuracy (full credit from the task's checker) on the first n held-out items,
    its 95% Wilson interval, which items were solved (`solved`, in order: for paired
    tests), format rate, mean completion length in tokens, accuracy per
    question kind where the task has kinds; with pass_k, pass@k from `samples` (default k)
    samples per item at `temperature`; with_baselines, the `baselines` beside it. With
    `at_most`, a task with fewer than n held-out questions is scored on all it has."""
    items = task.eval_items(n, at_most)
    scored: list[Scored] = []
    texts: list[str] = []
    lengths: list[int] = []
    passes: list[float] = []
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    n = len(items)
    for start in range(0, n, batch_size):
        chunk = items[start : start + batch_size]
        out = complete(model, tokenizer, task, chunk, max_new_tokens=max_new_tokens)
        scored += [score_completion(task, item, text, len(t), max_new_tokens, DEFAULT_WEIGHTS)
                   for item, text, t in zip(chunk, out.texts, out.tokens)]
        lengths += [len(t) for t in out.tokens]
        texts += out.texts
        if pass_k:
            k_samples = samples or pass_k
            sampled = complete(model, tokenizer, task, chunk, num_samples=k_samples, max_new_tokens=max_new_tokens,
                               temperature=temperature, generator=generator)
            for i, item in enumerate(chunk):
                texts = sampled.texts[i * k_samples : (i + 1) * k_samples]
                correct = sum(task.score_text(text, item) >= 1.0 for text in texts)
                passes.append(pass_at_k(k_samples, correct, pass_k))
    solved = sum(s.solved for s in scored)
    low, high = wilson_interval(solved, n)
    result = {"task": task.name, "n": n, "accuracy": solved / n, "ci95": [low, high],
              "solved": [bool(s.solved) for s in scored],
              "format_rate": sum(s.format for s in scored) / n, "mean_completion_tokens": sum(lengths) / n}
    if getattr(task, "transcribes", False):
        result.update(_error_rates("", items, texts))
    kinds = sorted({item.kind for item in items if item.kind})
    if kinds:
        result["accuracy_by_kind"] = {k: _mean(s.solved for s, it in zip(scored, items) if it.kind == k)
                                      for k in kinds}
    if pass_k:
        result[f"pass@{pass_k}"] = _mean(passes)
    if with_baselines:
        result["baselines"] = baselines(model, tokenizer, task, items, batch_size=batch_size,
                                        max_new_tokens=max_new_tokens)
    return result


def _error_rates(prefix: str, items, texts: list[str]) -> dict[str, float]:
    """Corpus word and character error rates of `texts` against the items' transcripts
    (edits summed over the set, over the reference length summed), normalised alike."""
    from quatrix.tasks.transcribe import error_counts, normalise_transcript

    out = {}
    for unit, name in (("word", "wer"), ("char", "cer")):
        edits = reference = 0
        for item, text in zip(items, texts):
            e, r = error_counts(normalise_transcript(item.answer), normalise_transcript(text), unit)
            edits, reference = edits + e, reference + r
        out[f"{prefix}_{name}" if prefix else name] = edits / max(reference, 1)
    return out


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")
