"""An outside fuzzer against a live `quatrix serve` on loopback: schemathesis generates
requests from /openapi.json (every body's fields, types and bounds) and no request may get a
5xx; the server must still answer afterwards. Bounded in examples and time."""

import os

import pytest

pytest.importorskip("schemathesis", reason="the [dev] extra (schemathesis) is not installed")
pytest.importorskip("fastapi", reason="the [serve] extra (fastapi, uvicorn) is not installed")

import requests  # noqa: E402
import schemathesis  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402

from quatrix.pretrained import load_model_and_tokenizer  # noqa: E402
from quatrix.serve.app import create_app, scheduler_for  # noqa: E402
from serve_helpers import running_server  # noqa: E402


EXAMPLES = int(os.environ.get("QUATRIX_FUZZ_EXAMPLES", "40"))  # per operation; docs/results.md ran 150


@pytest.fixture(scope="module")
def live(chat_checkpoint):
    model, tokenizer = load_model_and_tokenizer(chat_checkpoint)
    app = create_app(scheduler_for(model, tokenizer, max_batch=16, max_queue=64), model_name="tiny",
                     max_tokens_default=8)
    with running_server(app) as url:
        yield url


def test_no_generated_request_gets_a_5xx(live):
    """Every operation of the schema, up to EXAMPLES generated requests each (schemathesis's
    strategies driven by hypothesis directly: its pytest plugin does not load under pytest 9)."""
    schema = schemathesis.openapi.from_url(f"{live}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "POST /v1/chat/completions", "POST /v1/completions", "POST /tokenize", "POST /detokenize"}
    calls = []
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def fuzz(case):
            response = case.call(base_url=live, timeout=60)
            calls.append(response.status_code)
            assert response.status_code < 500, (f"{case.method} {case.path} {case.body!r} -> "
                                                f"{response.status_code}: {response.text[:500]}")

        fuzz()
    assert len(calls) >= 100
    print(f"{len(calls)} generated requests, status codes {sorted(set(calls))}")


def test_the_server_still_answers_after_the_fuzzing(live):
    r = requests.post(f"{live}/v1/completions", json={"prompt": "hello there", "max_tokens": 3, "temperature": 0},
                      timeout=60)
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")
    assert requests.get(f"{live}/health", timeout=10).json()["status"] == "ok"


@pytest.mark.parametrize("body", [
    # a subnormal temperature overflowed logits / temperature to inf (now sampled at the
    # engine's floor, quatrix.engine.MIN_TEMPERATURE)
    {"prompt": "0", "temperature": 2.2250738585e-313, "max_tokens": 3},
    # a top_p that rounds to 0 in fp32 masked even the top token
    {"prompt": "0", "top_p": 5e-324, "max_tokens": 3},
])
def test_what_the_fuzzer_found_stays_fixed(live, body):
    """Each request got a 500 (NaN probabilities in the sampler) before the fix."""
    assert requests.post(f"{live}/v1/completions", json=body, timeout=60).status_code == 200
