"""Log-probabilities, echo, batched and token-id prompts on the server, and /tokenize,
/detokenize: the shapes vLLM and OpenAI's legacy completions API give, with values equal to
the ones Quatrix computes itself."""

import json
import math

import pytest

pytest.importorskip("fastapi", reason="the [serve] extra (fastapi, uvicorn) is not installed")

import torch  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from quatrix.chat import render  # noqa: E402
from quatrix.engine import generate  # noqa: E402
from quatrix.loss import token_logprobs  # noqa: E402
from quatrix.pretrained import load_model_and_tokenizer  # noqa: E402
from quatrix.serve.app import create_app, scheduler_for  # noqa: E402

USER = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def served(chat_checkpoint):
    model, tokenizer = load_model_and_tokenizer(chat_checkpoint)
    app = create_app(scheduler_for(model, tokenizer, max_batch=8), model_name="tiny")
    with TestClient(app) as client:
        yield client, model, tokenizer


def own_logprobs(model, ids: list[int]) -> list[float]:
    """Each token's log-probability after the ones before it, as quatrix computes it."""
    with torch.no_grad():
        x = torch.tensor([ids])
        return token_logprobs(model(x)["logits"][:, :-1], x[:, 1:])[0][0].tolist()


def sse(text):
    assert text.endswith("data: [DONE]\n\n")
    return [json.loads(block[6:]) for block in text.split("\n\n") if block and block != "data: [DONE]"]


def test_echo_scores_a_prompt_as_quatrix_does(served):
    client, model, tokenizer = served
    ids = tokenizer.encode("hello there, how are you today?")
    r = client.post("/v1/completions", json={"prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 3})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    lp = choice["logprobs"]
    assert choice["text"] == tokenizer.decode(ids) and choice["finish_reason"] == "length"
    assert lp["tokens"] == [tokenizer.decode([t]) for t in ids]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert all(abs(a - b) < 1e-4 for a, b in zip(lp["token_logprobs"][1:], own_logprobs(model, ids), strict=True))
    assert all(len(top) <= 3 and max(top.values()) >= got - 1e-6
               for top, got in zip(lp["top_logprobs"][1:], lp["token_logprobs"][1:]))
    assert lp["text_offset"][0] == 0 and lp["text_offset"] == sorted(lp["text_offset"])
    assert r.json()["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 0, "total_tokens": len(ids)}


def test_generated_tokens_carry_their_logprobs_streamed_or_not(served):
    client, model, tokenizer = served
    body = {"prompt": "hello there", "max_tokens": 6, "temperature": 0.7, "seed": 3, "logprobs": 2, "echo": True}
    whole = client.post("/v1/completions", json=body).json()["choices"][0]
    lp = whole["logprobs"]
    prompt = tokenizer.encode("hello there")
    stop = [tokenizer.token_id("<|end|>"), tokenizer.eot_id]
    generation = generate(model, [prompt], 6, temperature=0.7, stop_token_ids=stop,
                          generator=torch.Generator().manual_seed(3))
    expected, ended = generation.tokens[0], generation.finish_reasons[0] == "stop"
    # the logprobs are the model's own (before temperature), for the echoed prompt and every sampled
    # token, the stop token that ended the choice included (as vLLM gives it)
    assert len(lp["tokens"]) == len(prompt) + len(expected) + ended
    assert lp["tokens"][: len(prompt) + len(expected)] == [tokenizer.decode([t]) for t in prompt + expected]
    assert all(abs(a - b) < 1e-4 for a, b in zip(lp["token_logprobs"][1:], own_logprobs(model, prompt + expected)))
    chunks = sse(client.post("/v1/completions", json={**body, "stream": True}).text)
    streamed = [c["choices"][0]["logprobs"] for c in chunks if c["choices"][0]["logprobs"]]
    for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
        assert sum((s[key] for s in streamed), []) == lp[key]
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["text"]


def test_a_batch_of_prompts_answers_prompt_by_n_in_order(served):
    client, _, tokenizer = served
    prompts = ["hello there", "how are you"]
    single = [client.post("/v1/completions", json={"prompt": p, "max_tokens": 4, "temperature": 0}).json()
              ["choices"][0]["text"] for p in prompts]
    for batch in (prompts, [tokenizer.encode(p) for p in prompts]):  # text, or token ids
        r = client.post("/v1/completions", json={"prompt": batch, "max_tokens": 4, "temperature": 0, "n": 2})
        choices = r.json()["choices"]
        assert [c["index"] for c in choices] == [0, 1, 2, 3]
        assert [c["text"] for c in choices] == [single[0], single[0], single[1], single[1]]
        assert r.json()["usage"]["prompt_tokens"] == sum(len(tokenizer.encode(p)) for p in prompts)
    chunks = sse(client.post("/v1/completions", json={"prompt": prompts, "max_tokens": 4, "temperature": 0,
                                                      "n": 2, "stream": True}).text)
    texts = ["".join(c["choices"][0]["text"] for c in chunks if c["choices"][0]["index"] == i) for i in range(4)]
    assert texts == [c["text"] for c in choices]


def test_chat_logprobs_in_the_openai_shape(served):
    client, _, tokenizer = served
    body = {"messages": USER, "max_tokens": 5, "temperature": 0, "logprobs": True, "top_logprobs": 2}
    whole = client.post("/v1/chat/completions", json=body).json()
    content = whole["choices"][0]["logprobs"]["content"]
    # every generated token, and the stop token if one ended the reply
    assert len(content) == whole["usage"]["completion_tokens"] + (whole["choices"][0]["finish_reason"] == "stop")
    for item in content:
        assert item["bytes"] == list(item["token"].encode("utf-8")) and len(item["top_logprobs"]) == 2
        assert math.isclose(item["top_logprobs"][0]["logprob"], item["logprob"], abs_tol=1e-5)  # greedy
    plain = client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 5, "temperature": 0}).json()
    assert plain["choices"][0]["logprobs"] is None
    chunks = sse(client.post("/v1/chat/completions", json={**body, "stream": True}).text)
    streamed = sum((c["choices"][0]["logprobs"]["content"] for c in chunks if c["choices"][0].get("logprobs")), [])
    assert streamed == content


def test_tokenize_and_detokenize(served):
    client, model, tokenizer = served
    r = client.post("/tokenize", json={"prompt": "hello there"}).json()
    assert r["tokens"] == tokenizer.encode("hello there") and r["count"] == len(r["tokens"])
    assert r["max_model_len"] == model.config.max_seq_len
    chat = client.post("/tokenize", json={"messages": USER}).json()
    assert chat["tokens"] == render(USER, tokenizer, add_generation_prompt=True)[0]
    assert client.post("/detokenize", json={"tokens": r["tokens"]}).json() == {"prompt": "hello there"}


BAD = [
    ("/v1/completions", {"prompt": "hi", "logprobs": 21}, "field 'logprobs'"),
    ("/v1/completions", {"prompt": "hi", "logprobs": -1}, "field 'logprobs'"),
    ("/v1/completions", {"prompt": [5, 99999]}, "prompt holds token id 99999, outside the vocabulary"),
    ("/v1/completions", {"prompt": [[5], [1, -2]]}, "prompt.1 holds token id -2"),
    ("/v1/completions", {"prompt": ["hi", [1, 2]]}, "field 'prompt"),
    ("/v1/completions", {"prompt": []}, "prompt is an empty batch"),
    ("/v1/completions", {"prompt": ["a"] * 9}, "9 prompts x n=1 is more than the server decodes at once"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, "max_tokens 0 generates nothing"),
    ("/v1/completions", {"prompt": [[]]}, "prompt is empty"),
    ("/v1/chat/completions", {"messages": USER, "top_logprobs": 2}, "top_logprobs needs logprobs: true"),
    ("/v1/chat/completions", {"messages": USER, "logprobs": True, "top_logprobs": 21}, "field 'top_logprobs'"),
    ("/detokenize", {"tokens": [1, 100000]}, "tokens holds token id 100000"),
    ("/tokenize", {}, "exactly one of prompt"),
]


@pytest.mark.parametrize("path, body, message", BAD, ids=[m for _, _, m in BAD])
def test_bad_values_get_400_naming_the_field(served, path, body, message):
    client, _, _ = served
    r = client.post(path, json=body)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]["message"]
