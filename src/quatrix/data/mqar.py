"""Multi-query associative recall (MQAR), generated exactly as Zoology generates it (Arora
et al., 2023, "Zoology: Measuring and Improving Recall in Efficient Language Models"): the
in-context recall test that separates attention from efficient sequence mixers.

    spec = MQARSpec.parse("mqar:seq_len=64,kv_pairs=4")
    train, test = spec.datasets()              # each (inputs [N, L], labels [N, L])

An example of length L holds K key-value pairs, then queries:

    k1 v1 k2 v2 ... kK vK  0 0 k3 0 0 0 k1 0 ... 0      (keys in [1, V/2), values in [V/2, V))

Each key is asked once, at position 2K + 2·gap, the gaps drawn without replacement from
0 .. (L - 2K)/2 - 1 with probability ∝ α·i^(α-1) (i = 1, 2, ...: with the default α = 0.01
most queries land close to the pairs). The other positions are 0, or random tokens with
random_non_queries. The model must answer each query key with its value: the one target of
that position. Zoology's labels are already aligned with their inputs; QuatrixLM's
`labels[t + 1]` is position t's target, so the labels here are Zoology's moved one place
right (-100 everywhere else). Accuracy is exact match over every query of every example.

Written here rather than imported: Zoology is not on the package registries, and its
generator is forty lines whose every choice (ranges, gap law, label positions) is the
experiment's definition; a test pins each of them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from quatrix.specs import parse_spec

IGNORE = -100


@dataclass(frozen=True)
class MQARSpec:
    seq_len: int = 64  # L: tokens per example (even)
    kv_pairs: int = 4  # K: key-value pairs at the start, each queried once
    vocab: int = 8192  # V: keys from [1, V/2), values from [V/2, V)
    alpha: float = 0.01  # the power law of the query gaps
    random_non_queries: int = 1  # 1: positions that are not pairs or queries hold random tokens (0: zeros)
    n_train: int = 100_000
    n_test: int = 3_000
    seed: int = 0

    def __post_init__(self):
        L, K, V = self.seq_len, self.kv_pairs, self.vocab
        if L <= 0 or L % 2:
            raise ValueError(f"mqar: seq_len must be a positive even number, got {L}")
        if V <= L:
            raise ValueError(f"mqar: vocab {V} must be larger than seq_len {L}")
        if K < 1 or 4 * K > L:
            raise ValueError(f"mqar: kv_pairs {K} needs 4 x {K} <= seq_len {L} (2K tokens of pairs and a query "
                             "slot of 2 tokens for each key)")
        if K >= V // 2 - 1:
            raise ValueError(f"mqar: kv_pairs {K} needs as many distinct keys below vocab/2 = {V // 2}")
        if not self.alpha > 0:
            raise ValueError(f"mqar: alpha must be positive, got {self.alpha}")
        if self.random_non_queries not in (0, 1) or min(self.n_train, self.n_test) < 1:
            raise ValueError("mqar: random_non_queries is 0 or 1, n_train and n_test at least 1")

    @classmethod
    def parse(cls, spec: str) -> "MQARSpec":
        """"mqar:seq_len=64,kv_pairs=4,..." -> MQARSpec; unknown options are named."""
        name, options = parse_spec(spec, "task")
        if name != "mqar":
            raise ValueError(f"not an mqar spec: {spec!r}")
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"mqar: unknown option(s) {unknown}; it takes {sorted(known)}")
        return cls(**{k: (float if known[k] == "float" else int)(v) for k, v in options.items()})

    def datasets(self) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """(train inputs, labels), (test inputs, labels): disjoint seeds, so no test example
        is a training one by construction."""
        return generate(self, self.n_train, seed=2 * self.seed), generate(self, self.n_test, seed=2 * self.seed + 1)


def gap_probabilities(seq_len: int, kv_pairs: int, alpha: float) -> np.ndarray:
    """p(gap = i - 1) ∝ α·i^(α-1), i = 1 .. (L - 2K)/2: the query-slot law."""
    slots = (seq_len - 2 * kv_pairs) // 2
    p = alpha * np.arange(1, slots + 1) ** (alpha - 1)
    return p / p.sum()


def generate(spec: MQARSpec, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """n examples: input ids [n, L] (int64) and labels [n, L] (the value one place after each
    query key, -100 elsewhere). A function of (spec, n, seed) alone."""
    L, K, V = spec.seq_len, spec.kv_pairs, spec.vocab
    rng = np.random.default_rng(seed)
    keys = np.stack([rng.choice(np.arange(1, V // 2), K, replace=False) for _ in range(n)])  # [n, K]
    values = np.stack([rng.choice(np.arange(V // 2, V), K, replace=False) for _ in range(n)])  # [n, K]
    pairs = np.empty((n, 2 * K), dtype=np.int64)
    pairs[:, 0::2], pairs[:, 1::2] = keys, values  # k1 v1 k2 v2 ...
    p = gap_probabilities(L, K, spec.alpha)
    gaps = np.stack([rng.choice(len(p), K, replace=False, p=p) for _ in range(n)])  # [n, K], one slot per key
    queries = np.zeros((n, L - 2 * K), dtype=np.int64)
    np.put_along_axis(queries, 2 * gaps, keys, axis=1)
    inputs = np.concatenate([pairs, queries], axis=1)  # [n, L]
    labels = np.full((n, L), IGNORE, dtype=np.int64)
    np.put_along_axis(labels, 2 * K + 2 * gaps + 1, values, axis=1)  # position t's target sits at t + 1
    if spec.random_non_queries:
        noise = rng.integers(0, V, size=inputs.shape)
        inputs = np.where(inputs == 0, noise, inputs)
    return torch.from_numpy(inputs), torch.from_numpy(labels)


@torch.no_grad()
def recall_accuracy(model, inputs: Tensor, labels: Tensor, batch_size: int = 256) -> float:
    """Exact match over every query of every example: the greedy prediction at a query key's
    position against its value."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    try:
        for start in range(0, len(inputs), batch_size):
            ids = inputs[start : start + batch_size].to(device)
            targets = labels[start : start + batch_size, 1:].to(device)  # [B, L-1]: position t's target
            predicted = model(ids)["logits"][:, :-1].argmax(-1)  # [B, L-1]
            asked = targets != IGNORE
            correct += int((predicted[asked] == targets[asked]).sum())
            total += int(asked.sum())
    finally:
        model.train(was_training)
    return correct / max(total, 1)
