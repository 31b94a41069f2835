import numpy as np
import pytest
import torch

from conftest import tiny_config
from quatrix import QuatrixLM
from quatrix.data.mqar import IGNORE, MQARSpec, gap_probabilities, generate, recall_accuracy


def test_layout_keys_values_queries_and_labels():
    spec = MQARSpec(seq_len=32, kv_pairs=4, vocab=128, random_non_queries=0)
    inputs, labels = generate(spec, 50, seed=3)
    assert inputs.shape == labels.shape == (50, 32) and inputs.dtype == torch.int64
    for x, y in zip(inputs.tolist(), labels.tolist()):
        keys, values = x[0:8:2], x[1:8:2]
        assert all(1 <= k < 64 for k in keys) and all(64 <= v < 128 for v in values)
        assert len(set(keys)) == 4 and len(set(values)) == 4  # without replacement within an example
        asked = [t for t in range(8, 32) if x[t] != 0]
        assert sorted(x[t] for t in asked) == sorted(keys)  # each key asked once, nothing else in the queries
        assert all((t - 8) % 2 == 0 for t in asked)  # at 2K + 2 * gap
        targets = {t - 1: v for t, v in enumerate(y) if v != IGNORE}
        assert sorted(targets) == sorted(asked)  # position t's target is labels[t + 1]
        assert all(values[keys.index(x[t])] == v for t, v in targets.items())


def test_random_non_queries_fill_only_the_empty_positions():
    quiet = MQARSpec(seq_len=64, kv_pairs=8, vocab=256, random_non_queries=0)
    noisy = MQARSpec(seq_len=64, kv_pairs=8, vocab=256, random_non_queries=1)
    (a, la), (b, lb) = generate(quiet, 20, seed=1), generate(noisy, 20, seed=1)
    assert torch.equal(la, lb)
    kept = a != 0
    assert torch.equal(a[kept], b[kept]) and (b[~kept] != 0).float().mean() > 0.9


def test_gaps_follow_the_power_law_and_generation_is_deterministic():
    spec = MQARSpec(seq_len=128, kv_pairs=2, vocab=512, alpha=0.5, random_non_queries=0)
    inputs, _ = generate(spec, 4000, seed=0)
    slots = [(t - 4) // 2 for row in inputs.tolist() for t in range(4, 128) if row[t] != 0]
    counts = np.bincount(slots, minlength=62) / len(slots)
    p = gap_probabilities(128, 2, 0.5)  # two draws without replacement: close to p for small p
    assert counts[0] > counts[10] > counts[50] and abs(counts[:5].sum() - p[:5].sum()) < 0.1
    assert torch.equal(generate(spec, 10, seed=7)[0], generate(spec, 10, seed=7)[0])
    assert not torch.equal(generate(spec, 10, seed=7)[0], generate(spec, 10, seed=8)[0])
    train, test = MQARSpec(seq_len=16, kv_pairs=2, vocab=64, n_train=5, n_test=5).datasets()
    assert not torch.equal(train[0], test[0])


@pytest.mark.parametrize("spec, message", [
    ("mqar:seq_len=63", "seq_len must be a positive even number"),
    ("mqar:seq_len=64,vocab=64", "vocab 64 must be larger than seq_len 64"),
    ("mqar:seq_len=64,kv_pairs=17", "kv_pairs 17 needs 4 x 17 <= seq_len 64"),
    ("mqar:colour=red", r"unknown option\(s\) \['colour'\]"),
])
def test_bad_specs_are_named(spec, message):
    with pytest.raises(ValueError, match=message):
        MQARSpec.parse(spec)


def test_spec_defaults_and_accuracy_counts_every_query():
    spec = MQARSpec.parse("mqar:seq_len=32,kv_pairs=4,vocab=97,n_test=8")
    assert (spec.vocab, spec.alpha, spec.n_train) == (97, 0.01, 100_000)
    inputs, labels = generate(spec, 8, seed=0)
    model = QuatrixLM(tiny_config(vocab_size=97))

    class Oracle(torch.nn.Module):  # answers every query right: accuracy 1 counts exactly the queries
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, ids):
            rows = torch.arange(len(ids))[:, None]
            logits = torch.zeros(*ids.shape, 97)
            shifted = labels[: len(ids), 1:]
            target = torch.where(shifted == IGNORE, 0, shifted)
            logits[rows, torch.arange(ids.shape[1] - 1), target] = 1.0
            return {"logits": logits}

    assert recall_accuracy(Oracle(), inputs, labels) == 1.0
    assert 0.0 <= recall_accuracy(model, inputs, labels) < 0.2
