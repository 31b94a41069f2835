"""The OpenAI-compatible API: every endpoint, streaming and not, and every bad request."""

import base64
import io
import json
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="the [serve] extra (fastapi, uvicorn) is not installed")

from fastapi.testclient import TestClient  # noqa: E402

from conftest import tiny_config  # noqa: E402
from quatrix import QuatrixLM  # noqa: E402
from quatrix.chat import render  # noqa: E402
from quatrix.engine import generate  # noqa: E402
from quatrix.serve.app import create_app, scheduler_for  # noqa: E402
from quatrix.pretrained import load_model_and_tokenizer  # noqa: E402
from serve_helpers import running_server, slow_steps  # noqa: E402

USER = [{"role": "user", "content": "hello there"}]


def make_app(ckpt, **kwargs):
    model, tokenizer = load_model_and_tokenizer(ckpt)
    limits = {k: kwargs.pop(k) for k in ("max_batch", "max_queue") if k in kwargs}
    return create_app(scheduler_for(model, tokenizer, **limits), model_name="tiny", **kwargs), model, tokenizer


@pytest.fixture(scope="module")
def served(chat_checkpoint):
    app, model, tokenizer = make_app(chat_checkpoint)
    with TestClient(app) as client:
        yield client, model, tokenizer


def sse(text):
    """The data payloads of a server-sent-events body; checks the framing."""
    assert text.endswith("data: [DONE]\n\n")
    events = [block for block in text.split("\n\n") if block]
    assert all(e.startswith("data: ") for e in events)
    return [json.loads(e[6:]) for e in events[:-1]]


def test_chat_completion_equals_the_engine_and_counts_usage(served):
    client, model, tokenizer = served
    r = client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 8, "temperature": 0})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-") and body["model"] == "tiny"
    assert isinstance(body["created"], int)
    prompt, _ = render(USER, tokenizer, add_generation_prompt=True)
    end = [tokenizer.token_id("<|end|>"), tokenizer.eot_id]
    expected = generate(model, [prompt], 8, temperature=0, stop_token_ids=end)
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    hidden = {i for n, i in tokenizer.special.items() if n not in ("<think>", "</think>", "<answer>", "</answer>")}
    assert choice["message"]["content"] == tokenizer.decode([t for t in expected.tokens[0] if t not in hidden])
    assert choice["finish_reason"] == expected.finish_reasons[0]
    assert body["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": len(expected.tokens[0]),
                             "total_tokens": len(prompt) + len(expected.tokens[0])}


def test_max_completion_tokens_and_n(served):
    client, _, _ = served
    r = client.post("/v1/chat/completions", json={"messages": USER, "max_completion_tokens": 3, "n": 3,
                                                  "temperature": 1.0, "seed": 7})
    body = r.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert body["usage"]["completion_tokens"] <= 9
    again = client.post("/v1/chat/completions", json={"messages": USER, "max_completion_tokens": 3, "n": 3,
                                                      "temperature": 1.0, "seed": 7}).json()
    assert [c["message"] for c in again["choices"]] == [c["message"] for c in body["choices"]]


def test_chat_streaming_chunks_and_usage(served):
    client, _, _ = served
    whole = client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 8, "temperature": 0}).json()
    r = client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 8, "temperature": 0,
                                                  "stream": True, "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    chunks = sse(r.text)
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    finals = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finals == [whole["choices"][0]["finish_reason"]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


def test_completions_plain_and_streamed(served):
    client, model, tokenizer = served
    r = client.post("/v1/completions", json={"prompt": "hello there", "max_tokens": 6, "temperature": 0})
    body = r.json()
    assert body["object"] == "text_completion" and body["choices"][0]["logprobs"] is None
    streamed = sse(client.post("/v1/completions", json={"prompt": "hello there", "max_tokens": 6, "temperature": 0,
                                                        "stream": True}).text)
    assert "".join(c["choices"][0]["text"] for c in streamed) == body["choices"][0]["text"]
    assert all("usage" not in c for c in streamed)  # only with stream_options.include_usage


def test_stop_strings_end_the_reply_before_them(served):
    client, _, _ = served
    full = client.post("/v1/completions", json={"prompt": "hello there", "max_tokens": 12,
                                                "temperature": 0}).json()["choices"][0]["text"]
    if len(full) < 3:
        pytest.skip("the tiny model's greedy text is too short to pick a stop string from")
    stop = full[2:4]
    cut = client.post("/v1/completions", json={"prompt": "hello there", "max_tokens": 12, "temperature": 0,
                                               "stop": [stop]}).json()["choices"][0]
    assert cut["text"] == full[: full.find(stop)] and cut["finish_reason"] == "stop"


def test_models_health_and_page(served):
    client, _, _ = served
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "tiny"
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["context"] == 128 and health["vision"] is False
    page = client.get("/")
    assert page.status_code == 200 and "/v1/chat/completions" in page.text


BAD = [
    (b"{not json", "malformed JSON"),
    (b"[1, 2]", "must be a JSON object"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "unknown role 'robot'"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": "x"}]}, "system message"),
    ({"messages": []}, "field 'messages'"),
    ({"messages": "hello"}, "field 'messages'"),
    ({"messages": USER, "temperature": "hot"}, "field 'temperature'"),
    ({"messages": USER, "temperature": 3}, "field 'temperature'"),
    ({"messages": USER, "top_p": 0}, "field 'top_p'"),
    ({"messages": USER, "n": 0}, "field 'n'"),
    ({"messages": USER, "max_tokens": -1}, "field 'max_tokens'"),
    ({"messages": USER, "max_tokens": 1000}, "max_tokens is 1000"),
    ({"messages": USER, "stream": "yes"}, "field 'stream'"),
    ({"messages": USER, "stop": ["a", "b", "c", "d", "e"]}, "at most 4"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:x;base64,AA=="}},
                                                {"type": "text", "text": "what"}]}]}, "no vision encoder"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AA=="}},
                                                {"type": "text", "text": "what"}]}]}, "no audio encoder"),
    ({"messages": [{"role": "user", "content": [{"type": "video", "text": "x"}]}]}, "field 'messages.0.content"),
]


@pytest.mark.parametrize("body, message", BAD, ids=[m for _, m in BAD])
def test_bad_requests_get_400_naming_the_problem(served, body, message):
    client, _, _ = served
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = client.post("/v1/chat/completions", content=content, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert message in error["message"] and error["type"] == "invalid_request_error"


def test_context_overflow_names_both_numbers(served):
    client, _, tokenizer = served
    long = "hello there " * 100
    r = client.post("/v1/completions", json={"prompt": long, "max_tokens": 10})
    n = len(tokenizer.encode(long))
    assert r.status_code == 400
    assert f"the prompt has {n} tokens and max_tokens is 10" in r.json()["error"]["message"]
    assert "context of 128 tokens" in r.json()["error"]["message"]


def test_api_key_and_body_limit(chat_checkpoint):
    app, _, _ = make_app(chat_checkpoint, api_key="sesame", max_body_bytes=2000)
    with TestClient(app) as client:
        assert client.post("/v1/chat/completions", json={"messages": USER}).status_code == 401
        assert client.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = {"Authorization": "Bearer sesame"}
        assert client.get("/v1/models", headers=ok).status_code == 200
        assert client.get("/health").status_code == 200  # liveness needs no key
        big = client.post("/v1/chat/completions", headers=ok,
                          json={"messages": [{"role": "user", "content": "x" * 5000}]})
        assert big.status_code == 413 and "over the limit of 2000 bytes" in big.json()["error"]["message"]


def test_vision_checkpoint_takes_a_data_url_image(tmp_path, chat_checkpoint):
    from PIL import Image

    from quatrix.tokenizer import load_tokenizer
    from quatrix.media import image_to_tensor

    tokenizer = load_tokenizer(chat_checkpoint)
    model = QuatrixLM(tiny_config(vocab_size=tokenizer.vocab_size, max_seq_len=128, use_vision=True))
    model.save_pretrained(tmp_path)
    tokenizer.save(tmp_path)
    image = Image.new("RGB", (40, 40), (200, 30, 30))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    messages = [{"role": "user", "content": [{"type": "text", "text": "hello there"},
                                             {"type": "image_url", "image_url": {"url": url}}]}]
    app, model, _ = make_app(tmp_path)
    with TestClient(app) as client:
        body = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 6,
                                                         "temperature": 0}).json()
        bad = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [
            {"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "https://x.org/a.png"}}]}]})
    prompt, _ = render([{"role": "user", "content": "hello there", "image": True}], tokenizer,
                       add_generation_prompt=True)
    pixels = image_to_tensor(image, model.config.image_size)[None]
    end = [tokenizer.token_id("<|end|>"), tokenizer.eot_id]
    expected = generate(model, [prompt], 6, temperature=0, stop_token_ids=end, pixel_values=pixels)
    assert body["usage"]["completion_tokens"] == len(expected.tokens[0])
    assert body["usage"]["prompt_tokens"] == len(prompt)
    assert bad.status_code == 400 and "data URL" in bad.json()["error"]["message"]


def test_queue_bound_answers_429(chat_checkpoint):
    import httpx

    app, _, _ = make_app(chat_checkpoint, max_batch=1, max_queue=1)
    slow_steps(app.state.scheduler, 0.05)
    body = {"messages": USER, "max_tokens": 40, "temperature": 0}
    with running_server(app) as url:
        results = []

        def call():
            results.append(httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60))

        threads = [threading.Thread(target=call) for _ in range(2)]
        for t in threads:
            t.start()
            time.sleep(0.3)  # the first is decoding, the second waits
        third = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
        for t in threads:
            t.join()
    assert third.status_code == 429 and third.json()["error"]["type"] == "rate_limit_error"
    assert "retry later" in third.json()["error"]["message"] and third.headers["retry-after"] == "1"
    assert sorted(r.status_code for r in results) == [200, 200]


def test_a_client_that_disconnects_mid_stream_frees_its_slot(chat_checkpoint):
    import httpx

    app, _, _ = make_app(chat_checkpoint, max_batch=1, max_queue=0)
    scheduler = app.state.scheduler
    slow_steps(scheduler, 0.05)
    body = {"messages": USER, "max_tokens": 100, "temperature": 0, "stream": True}
    with running_server(app) as url:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            while '"content": ""' in next(lines) or not scheduler.steps:
                pass  # until the first generated text arrives: the request is decoding
            assert scheduler.load["running_sequences"] == 1
        deadline = time.monotonic() + 10
        while scheduler.load["running_sequences"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert scheduler.load["running_sequences"] == 0
        steps = scheduler.steps
        assert steps < 60  # it stopped well before its 100 tokens
        # the freed slot serves the next request at once (max_queue=0: it would get 429 otherwise)
        r = httpx.post(f"{url}/v1/chat/completions", json={**body, "stream": False, "max_tokens": 3}, timeout=60)
        assert r.status_code == 200


def test_audio_checkpoint_takes_an_input_audio_part(tmp_path, chat_checkpoint):
    import numpy as np
    import soundfile

    from quatrix.media import read_audio
    from quatrix.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(chat_checkpoint)
    model = QuatrixLM(tiny_config(vocab_size=tokenizer.vocab_size, max_seq_len=128, use_audio=True))
    model.save_pretrained(tmp_path)
    tokenizer.save(tmp_path)
    wave = (0.3 * np.sin(np.arange(6000) * 0.05)).astype("float32")
    buffer = io.BytesIO()
    soundfile.write(buffer, wave, 8000, format="WAV")  # any rate: the server resamples
    data = base64.b64encode(buffer.getvalue()).decode()
    part = {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "hello there"}, part]}]
    app, model, _ = make_app(tmp_path)
    with TestClient(app) as client:
        assert client.get("/health").json()["audio"] is True
        body = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 6,
                                                         "temperature": 0}).json()
        broken = {"type": "input_audio", "input_audio": {"data": base64.b64encode(b"not audio").decode()}}
        bad = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [
            {"type": "text", "text": "hi"}, broken]}]})
        two = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [
            {"type": "text", "text": "hi"}, part, part]}]})
    prompt, _ = render([{"role": "user", "content": "hello there", "audio": True}], tokenizer,
                       add_generation_prompt=True)
    buffer.seek(0)
    clip = read_audio(buffer, model.config.sample_rate, model.config.audio_max_seconds)[None]
    end = [tokenizer.token_id("<|end|>"), tokenizer.eot_id]
    expected = generate(model, [prompt], 6, temperature=0, stop_token_ids=end, mel_values=clip)
    assert body["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": len(expected.tokens[0]),
                             "total_tokens": len(prompt) + len(expected.tokens[0])}
    assert bad.status_code == 400 and "could not read audio input_audio" in bad.json()["error"]["message"]
    assert two.status_code == 400 and "one audio clip per conversation" in two.json()["error"]["message"]
