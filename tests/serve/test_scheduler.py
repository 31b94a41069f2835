"""The batching scheduler: sequences join and leave one batch between decode steps, and a
request's greedy output does not depend on its companions."""

import threading

import pytest

pytest.importorskip("fastapi", reason="the [serve] extra (fastapi, uvicorn) is not installed")
import torch

from conftest import tiny_config
from quatrix import QuatrixLM
from quatrix.engine import Cache, generate
from quatrix.serve.scheduler import Delta, Done, QueueFull, Request, Scheduler, _Choice

STOP = 96  # the tiny model's stop token


class Collect:
    def __init__(self):
        self.events, self.done = [], threading.Event()

    def __call__(self, event):
        self.events.append(event)
        if not isinstance(event, Delta):
            self.done.set()


def model_and_scheduler(**kwargs):
    torch.manual_seed(0)
    model = QuatrixLM(tiny_config(max_seq_len=64)).eval()
    scheduler = Scheduler(model, _Recorder(), stop_token_ids=[STOP], **kwargs)
    return model, scheduler


@pytest.mark.parametrize("mixer", [{}, dict(q_value_content=True, q_heads=2), dict(mixer="mha", q_heads=4)])
def test_merged_cache_continues_each_row_as_its_own_cache(mixer):
    torch.manual_seed(0)
    model = QuatrixLM(tiny_config(max_seq_len=64, **mixer)).eval()
    prompts = [[3, 4, 5, 6, 7, 8], [9, 10], [11, 12, 13, 14]]
    with torch.no_grad():
        alone, caches = [], []
        for p in prompts:
            cache = Cache(model, 1, len(p) + 4)
            model(torch.tensor([p]), cache=cache)
            caches.append(cache)
            alone.append(model(torch.tensor([[20]]), cache=cache)["logits"][0, -1])
        fresh = []
        for p in prompts:
            cache = Cache(model, 1, len(p) + 4)
            model(torch.tensor([p]), cache=cache)
            fresh.append(cache)
        merged = Cache.merge(fresh)
        together = model(torch.tensor([[20]] * 3), cache=merged)["logits"][:, -1]
        torch.testing.assert_close(together, torch.stack(alone), rtol=0, atol=1e-5)
        merged.select([2, 0])  # the middle row finished
        again = model(torch.tensor([[21], [21]]), cache=merged)["logits"][:, -1]
        for i, row in ((0, 2), (1, 0)):
            expected = model(torch.tensor([[21]]), cache=caches[row])["logits"][0, -1]
            torch.testing.assert_close(again[i], expected, rtol=0, atol=1e-5)


def test_greedy_output_is_the_same_alone_and_in_a_changing_batch():
    """Requests arrive while others decode (staggered), with different lengths and limits:
    each one's greedy tokens equal quatrix.engine.generate on it alone."""
    model, scheduler = model_and_scheduler(max_batch=4, max_queue=32)
    prompts = [[(7 * i + j) % 90 + 1 for j in range(2 + i % 5)] for i in range(10)]
    limits = [3 + (i * 5) % 11 for i in range(10)]
    sinks = [Collect() for _ in prompts]
    scheduler.start()
    try:
        for i, (p, limit) in enumerate(zip(prompts, limits)):
            scheduler.submit(Request(p, limit, sinks[i], sampling=_greedy()))
            if i % 3 == 2:
                sinks[i].done.wait(10)
        assert all(s.done.wait(30) for s in sinks)
    finally:
        scheduler.stop()
    assert scheduler.largest_batch > 1  # they really were batched
    for p, limit, sink in zip(prompts, limits, sinks):
        expected = generate(model, [p], limit, temperature=0, stop_token_ids=[STOP]).tokens[0]
        text = "".join(e.text for e in sink.events if isinstance(e, Delta))
        assert _Recorder.ids(text) == expected
        assert isinstance(sink.events[-1], Done) and sink.events[-1].completion_tokens == len(expected)


def test_n_choices_share_one_prefill_and_a_seed_fixes_the_sample():
    model, scheduler = model_and_scheduler(max_batch=8)
    scheduler.start()
    try:
        texts = []
        for companions in (0, 2):
            others = [Collect() for _ in range(companions)]
            for sink in others:
                scheduler.submit(Request([5, 6, 7], 6, sink))
            sink = Collect()
            scheduler.submit(Request([1, 2, 3], 6, sink, n=3, seed=1234))
            assert sink.done.wait(30) and all(o.done.wait(30) for o in others)
            by_choice = ["".join(e.text for e in sink.events if isinstance(e, Delta) and e.index == i) for i in range(3)]
            texts.append(by_choice)
    finally:
        scheduler.stop()
    assert texts[0] == texts[1]  # the same seed gives the same samples, whoever else is decoding
    assert len(set(texts[0])) > 1  # the three choices are different samples


def test_waiting_queue_is_bounded():
    _, scheduler = model_and_scheduler(max_batch=1, max_queue=2)  # not started: requests wait
    for _ in range(2):
        scheduler.submit(Request([1, 2], 4, Collect()))
    with pytest.raises(QueueFull, match="2 requests are waiting"):
        scheduler.submit(Request([1, 2], 4, Collect()))
    with pytest.raises(ValueError, match="n=2 is more than"):
        scheduler.submit(Request([1, 2], 4, Collect(), n=2))



def test_stop_strings_are_cut_and_their_prefixes_held_back():
    class Chars:
        def decode(self, ids):
            return "".join(chr(i) for i in ids)

    request = Request([1], 50, Collect(), stop=("END",))
    choice = _Choice(request, 0, Chars(), frozenset())
    sent = [choice.feed(ord(c), False) for c in "okE"]
    assert [d.text if d else None for d in sent] == ["o", "k", None]  # "E" might begin "END"
    assert choice.feed(ord("x"), False).text == "Ex"
    choice.feed(ord("E"), False)
    choice.feed(ord("N"), False)
    last = choice.feed(ord("D"), False)
    assert (last.text, last.finish_reason, choice.finished) == ("", "stop", True)


def _greedy():
    from quatrix.engine import Sampling

    return Sampling(temperature=0)


class _Recorder:
    """Encodes each token id as '<id>' so the stream's text gives back the tokens."""

    def decode(self, ids):
        return "".join(f"<{i}>" for i in ids)

    @staticmethod
    def ids(text):
        return [int(t) for t in text.replace(">", "").split("<") if t]


def test_identical_requests_stay_separate_and_a_failing_step_fails_only_what_runs():
    _, scheduler = model_and_scheduler(max_batch=4)
    sinks = [Collect(), Collect()]
    scheduler.start()
    try:
        for sink in sinks:  # equal in every field: still two requests, each with its own Done
            scheduler.submit(Request([1, 2, 3], 5, sink, sampling=_greedy()))
        assert all(s.done.wait(30) for s in sinks)
        assert [type(s.events[-1]).__name__ for s in sinks] == ["Done", "Done"]
        texts = ["".join(e.text for e in s.events if isinstance(e, Delta)) for s in sinks]
        assert texts[0] == texts[1]

        step = scheduler._step
        scheduler._step = lambda: (_ for _ in ()).throw(RuntimeError("boom"))
        broken = Collect()
        scheduler.submit(Request([1, 2], 5, broken))
        assert broken.done.wait(30) and "generation failed: RuntimeError: boom" in broken.events[-1].message
        scheduler._step = step
        after = Collect()
        scheduler.submit(Request([1, 2], 3, after, sampling=_greedy()))
        assert after.done.wait(30) and isinstance(after.events[-1], Done)  # the server goes on
    finally:
        scheduler.stop()
