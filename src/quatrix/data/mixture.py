"""A mixture of data sources: each optimizer step draws its whole batch from one source,
chosen with the given weights (as the Quatrix paper trains on text, image-text, audio-text
and world-model transitions).

The choice depends only on (seed, step), so every rank picks the same source at a step and
a resumed run makes the same choices."""

from __future__ import annotations

import numpy as np
import torch

SOURCES = ("text", "image", "audio", "world")


def parse_mixture(spec: str) -> dict[str, float]:
    """'text=0.7,image=0.3' -> {'text': 0.7, 'image': 0.3} (weights are normalised later;
    a source named twice is an error, a zero weight drops it)."""
    weights = {}
    for part in spec.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in SOURCES:
            raise ValueError(f"--mixture: expected NAME=WEIGHT with NAME in {SOURCES}, got {part!r}")
        if name in weights:
            raise ValueError(f"--mixture: {name} is given twice")
        try:
            weights[name] = float(value)
        except ValueError:
            raise ValueError(f"--mixture: weight of {name} is not a number: {value!r}") from None
        if not 0 <= weights[name] < float("inf"):
            raise ValueError(f"--mixture: weight of {name} must be a finite non-negative number, got {value!r}")
    if sum(weights.values()) <= 0:
        raise ValueError("--mixture: weights sum to zero")
    return {k: v for k, v in weights.items() if v > 0}


class Mixture:
    def __init__(self, loaders: dict, weights: dict[str, float], seed: int = 0):
        missing = set(weights) - set(loaders)
        if missing:
            raise ValueError(f"--mixture names {sorted(missing)} but no such data was given")
        self.loaders, self.seed = loaders, seed
        self.names = sorted(weights)
        total = sum(weights.values())
        self.probs = np.array([weights[n] / total for n in self.names])

    def next_batch(self, step: int) -> tuple[str, dict[str, torch.Tensor]]:
        name = self.names[int(np.random.default_rng([self.seed, step, 7]).choice(len(self.names), p=self.probs))]
        batch = self.loaders[name].next_batch()
        if isinstance(batch, torch.Tensor):  # packed text: the labels are the inputs
            batch = {"input_ids": batch, "labels": batch}
        return name, batch

    def state_dict(self) -> dict:
        return {name: loader.state_dict() for name, loader in self.loaders.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, loader in self.loaders.items():
            if name in state:
                loader.load_state_dict(state[name])
