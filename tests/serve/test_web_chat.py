"""The web chat page in a real headless Chromium (Debian's `chromium`, driven by Playwright):
load it, send a message, watch the streamed reply appear, and check it is the model's."""

import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the [serve] extra (fastapi, uvicorn) is not installed")
pytest.importorskip("playwright.sync_api", reason="the [browser] extra (playwright) is not installed")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from serve_helpers import running_server, slow_steps  # noqa: E402
from web_chat_screenshot import CHROMIUM, chat_in_browser  # noqa: E402

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (apt-get install chromium; "
                                                         "`make test` installs it where apt-get can)")


def test_page_streams_the_models_reply(chat_checkpoint, tmp_path):
    from fastapi.testclient import TestClient

    from quatrix.serve.app import create_app, scheduler_for
    from quatrix.pretrained import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(chat_checkpoint)
    app = create_app(scheduler_for(model, tokenizer), model_name="tiny")
    slow_steps(app.state.scheduler, 0.03)  # slow enough to watch the text grow
    with running_server(app) as url:
        seen, final = chat_in_browser(url, ["hello there"], screenshot=tmp_path / "chat.png")
    with TestClient(create_app(scheduler_for(model, tokenizer), model_name="tiny")) as client:
        expected = client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "hello there"}], "temperature": 0,
            "top_p": 0.95}).json()["choices"][0]["message"]["content"]
    assert final == expected and final.strip()
    partial = [s for s in seen if s and s != final]
    assert partial and all(final.startswith(s) for s in partial)  # it grew while streaming
    assert (tmp_path / "chat.png").stat().st_size > 10_000
