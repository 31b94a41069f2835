import pytest
import torch

from quatrix.data.mixture import Mixture, parse_mixture


class Counter:
    def __init__(self, name):
        self.name, self.calls = name, 0

    def next_batch(self):
        self.calls += 1
        return torch.full((1, 2), self.calls) if self.name == "text" else {"input_ids": torch.zeros(1, 2)}

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state["calls"]


def test_parse_mixture():
    assert parse_mixture("text=0.7, image=0.3") == {"text": 0.7, "image": 0.3}
    assert parse_mixture("text=1,image=0") == {"text": 1.0}
    for spec, message in [("video=1", "NAME=WEIGHT"), ("text", "NAME=WEIGHT"), ("text=x", "not a number"),
                          ("text=-1", "negative"), ("text=0", "sum to zero")]:
        with pytest.raises(ValueError, match=message):
            parse_mixture(spec)


def test_choice_depends_on_seed_and_step_alone():
    def choices(seed, steps):
        mix = Mixture({"text": Counter("text"), "image": Counter("image")}, {"text": 0.75, "image": 0.25}, seed)
        return [mix.next_batch(s)[0] for s in steps]

    steps = list(range(400))
    first = choices(3, steps)
    assert first == choices(3, steps)
    assert choices(3, steps[200:]) == first[200:]  # a resumed run makes the same choices
    assert choices(4, steps) != first
    assert 0.68 < first.count("text") / 400 < 0.82


def test_text_batches_become_labelled_and_state_round_trips():
    mix = Mixture({"text": Counter("text")}, {"text": 1.0})
    name, batch = mix.next_batch(0)
    assert name == "text" and torch.equal(batch["input_ids"], batch["labels"])
    state = mix.state_dict()
    other = Mixture({"text": Counter("text")}, {"text": 1.0})
    other.load_state_dict(state)
    assert torch.equal(other.next_batch(1)[1]["input_ids"], mix.next_batch(1)[1]["input_ids"])
    with pytest.raises(ValueError, match="no such data"):
        Mixture({"text": Counter("text")}, {"text": 0.5, "image": 0.5})
