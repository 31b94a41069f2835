"""`quatrix serve` and `quatrix export hf` from the command line."""

import json
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("fastapi", reason="the [serve] extra (fastapi, uvicorn) is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_binds_loopback_and_answers(chat_checkpoint):
    import httpx

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "quatrix.cli", "serve", "--ckpt", str(chat_checkpoint),
                               "--port", str(port), "--api-key", "k", "--model-name", "tiny-chat"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        banner = server.stdout.readline()
        assert "quatrix serve: tiny-chat" in banner and f"127.0.0.1:{port}" in banner
        url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                health = httpx.get(f"{url}/health", timeout=1).json()
                break
            except httpx.TransportError:
                time.sleep(0.05)
        assert health["model"] == "tiny-chat"
        headers = {"Authorization": "Bearer k"}
        assert httpx.get(f"{url}/v1/models", headers=headers).json()["data"][0]["id"] == "tiny-chat"
        reply = httpx.post(f"{url}/v1/chat/completions", headers=headers, timeout=60,
                           json={"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4})
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] <= 4
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_serve_refuses_a_checkpoint_without_tokenizer(tmp_path):
    from conftest import tiny_config
    from quatrix import QuatrixLM

    QuatrixLM(tiny_config()).save_pretrained(tmp_path)
    out = subprocess.run([sys.executable, "-m", "quatrix.cli", "serve", "--ckpt", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "no tokenizer saved beside the model" in out.stderr


def test_export_hf_command(chat_checkpoint, tmp_path):
    pytest.importorskip("transformers", reason="the [hf] extra (transformers) is not installed")
    out = subprocess.run([sys.executable, "-m", "quatrix.cli", "export", "hf", "--ckpt", str(chat_checkpoint),
                          "--out", str(tmp_path / "hf"), "--dtype", "bfloat16"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "trust_remote_code=True" in out.stdout
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "bfloat16"
    again = subprocess.run([sys.executable, "-m", "quatrix.cli", "export", "hf", "--ckpt", str(tmp_path / "none"),
                            "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "not found" in again.stderr
