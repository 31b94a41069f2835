"""Load test of `quatrix serve`, and whether batching changes greedy output.

Load: for each mixer (Q-Compass, SAVO, attention; same H, layers and vocabulary, random
weights unless --ckpt is given) a `quatrix serve` child process on loopback, and C concurrent
streaming clients in this process sending a fixed number of chat requests. Reported:
throughput (generated tokens/s), time to first token and time per output token (p50/p95),
and the largest batch the server decoded. "First token" is the first chunk with visible
text, as a client sees it: tokens that show nothing (role tokens, a partial UTF-8
character) delay it. Replies whose text only arrives with their last token (random
weights make some) are counted apart ("no text before the end") and left out of the
latency percentiles.

Parity: P prompts decoded together by the scheduler (greedy, sequences joining and leaving
the batch) against each prompt decoded alone by quatrix.engine; counts the prompts whose
tokens differ.

    python benchmarks/serve_load.py --clients 32 --requests 128 --parity 200 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

MIXERS = {"qcompass": {}, "savo": dict(q_value_content=True), "mha": dict(mixer="mha", q_heads=4)}
QUESTIONS = ["What is {a} + {b}?", "Tell me about the number {a}.", "Count from {a} to {b}.",
             "Is {a} larger than {b}? Think it through.", "Write a line about the sea and {a} ships."]


def prompts(n: int) -> list[str]:
    return [QUESTIONS[i % len(QUESTIONS)].format(a=(7 * i) % 50, b=(13 * i) % 90) for i in range(n)]


def build_checkpoints(root: Path, vocab: int, hidden: int, layers: int, rank: int, context: int,
                      mixers: list[str]) -> dict[str, Path]:
    from quatrix import QuatrixConfig, QuatrixLM
    from quatrix.tokenizer import train_tokenizer

    texts = prompts(200) + ["the sea and the ships, one two three four five six seven eight nine ten"] * 50
    tokenizer = train_tokenizer(texts, vocab)
    out = {}
    for name in mixers:
        overrides = MIXERS[name]
        torch.manual_seed(0)
        config = QuatrixConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_layers=layers, q_rank=rank,
                               max_seq_len=context, **overrides)
        model = QuatrixLM(config)
        model.save_pretrained(root / name)
        tokenizer.save(root / name)
        out[name] = root / name
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def one_client(client, url: str, queue: asyncio.Queue, max_tokens: int, results: list) -> None:
    while True:
        try:
            text = queue.get_nowait()
        except asyncio.QueueEmpty:
            return
        body = {"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens, "temperature": 0,
                "stream": True, "stream_options": {"include_usage": True}}
        start = time.perf_counter()
        first, late = None, False
        tokens = 0
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                results.append({"status": response.status_code})
                continue
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                elif first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    first = time.perf_counter()
                    late = chunk["choices"][0]["finish_reason"] is not None  # the first text came with the last token
        end = time.perf_counter()
        if first is None or late:  # no text before the end: the client never saw a first token
            results.append({"status": 200, "no_text": True, "latency": end - start, "tokens": tokens})
            continue
        results.append({"status": 200, "ttft": first - start, "latency": end - start, "tokens": tokens,
                        "tpot": (end - first) / max(1, tokens - 1)})


async def load(url: str, clients: int, requests: int, max_tokens: int) -> dict:
    import httpx

    queue: asyncio.Queue = asyncio.Queue()
    for text in prompts(requests):
        queue.put_nowait(text)
    results: list = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(one_client(client, url, queue, max_tokens, results) for _ in range(clients)))
        wall = time.perf_counter() - start
        health = (await client.get(f"{url}/health")).json()
    ok = [r for r in results if r["status"] == 200]
    timed = [r for r in ok if "ttft" in r]

    def pct(key, q):
        values = sorted(r[key] for r in timed)
        return values[min(len(values) - 1, int(q * len(values)))]

    return {"requests": len(results), "ok": len(ok), "no_text": len(ok) - len(timed), "wall_s": wall,
            "tokens_per_s": sum(r["tokens"] for r in ok) / wall, "requests_per_s": len(ok) / wall,
            "ttft_p50_ms": 1e3 * pct("ttft", 0.5), "ttft_p95_ms": 1e3 * pct("ttft", 0.95),
            "tpot_p50_ms": 1e3 * pct("tpot", 0.5), "tpot_p95_ms": 1e3 * pct("tpot", 0.95),
            "mean_tokens": statistics.mean(r["tokens"] for r in ok), "largest_batch": health["largest_batch"]}


def serve_and_load(ckpt: Path, args) -> dict:
    port = free_port()
    cmd = [sys.executable, "-m", "quatrix.cli", "serve", "--ckpt", str(ckpt), "--port", str(port),
           "--max-batch", str(args.max_batch), "--max-queue", str(args.requests), "--dtype", args.dtype]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": str(args.server_threads)})
    try:
        banner = server.stdout.readline()
        if "quatrix serve" not in banner:
            raise RuntimeError(f"server did not start: {banner}{server.stdout.read()}")
        threading.Thread(target=server.stdout.read, daemon=True).start()
        url = f"http://127.0.0.1:{port}"
        import httpx

        for _ in range(300):
            try:
                httpx.get(f"{url}/health", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        return asyncio.run(load(url, args.clients, args.requests, args.max_tokens))
    finally:
        server.terminate()
        server.wait(timeout=30)


def parity(ckpt: Path, n: int, max_tokens: int, max_batch: int) -> dict:
    """Greedy tokens of n chat prompts batched by the scheduler vs each decoded alone."""
    from quatrix.chat import render
    from quatrix.engine import Sampling, generate
    from quatrix.serve.app import scheduler_for
    from quatrix.serve.scheduler import Delta, Done, Request
    from quatrix.pretrained import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(ckpt)
    ids = [render([{"role": "user", "content": t}], tokenizer, add_generation_prompt=True)[0] for t in prompts(n)]
    scheduler = scheduler_for(model, tokenizer, max_batch=max_batch, max_queue=n)
    scheduler.hidden = frozenset()
    tokens: dict[int, list[int]] = {i: [] for i in range(n)}
    done = threading.Semaphore(0)

    class Ids:  # text = token ids, so the batched tokens can be read back exactly
        def decode(self, t):
            return "".join(f"<{i}>" for i in t)

    scheduler.tokenizer = Ids()

    def sink_for(i):
        def sink(event):
            if isinstance(event, Delta):
                tokens[i] += [int(x) for x in event.text.replace(">", "").split("<") if x]
            elif isinstance(event, Done):
                done.release()
        return sink

    scheduler.start()
    for i, p in enumerate(ids):
        scheduler.submit(Request(p, max_tokens, sink_for(i), sampling=Sampling(temperature=0)))
    for _ in ids:
        done.acquire()
    scheduler.stop()
    stops = sorted(scheduler.stop_ids.tolist())
    differ, first_diff = 0, []
    for i, p in enumerate(ids):
        alone = generate(model, [p], max_tokens, temperature=0, stop_token_ids=stops).tokens[0]
        if alone != tokens[i]:
            differ += 1
            first_diff.append(next((k for k, (a, b) in enumerate(zip(alone, tokens[i])) if a != b),
                                   min(len(alone), len(tokens[i]))))
    return {"prompts": n, "differ": differ, "largest_batch": scheduler.largest_batch, "first_diff_at": first_diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", action="append", help="NAME=DIR checkpoints (default: random ones per mixer)")
    parser.add_argument("--mixers", default=",".join(MIXERS), help="which random checkpoints, in serving order")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--parity", type=int, default=200, help="prompts for the batching parity check (0 = skip)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--server-threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--dtype", default="fp32", choices=["auto", "fp32", "bf16"], help="the servers' weights")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.ckpt:
            ckpts = {k: Path(v) for k, v in (c.split("=", 1) for c in args.ckpt)}
        else:
            mixers = args.mixers.split(",")
            unknown = sorted(set(mixers) - set(MIXERS))
            if unknown:
                parser.error(f"unknown mixer(s) {', '.join(unknown)}; choose from {', '.join(MIXERS)}")
            ckpts = build_checkpoints(Path(tmp), args.vocab, args.hidden, args.layers, args.rank, args.context,
                                      mixers)
        results = {}
        for name, ckpt in ckpts.items():
            results[name] = {"load": serve_and_load(ckpt, args)}
            if args.parity:
                results[name]["parity"] = parity(ckpt, args.parity, args.max_tokens, args.max_batch)
            print(name, json.dumps(results[name]), flush=True)
    print("\n| mixer | tokens/s | req/s | TTFT p50 / p95 (ms) | per token p50 / p95 (ms) | no text before the end | largest batch | "
          "greedy differs batched vs alone |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        load_, par = r["load"], r.get("parity")
        differ = f"{par['differ']}/{par['prompts']}" if par else "-"
        print(f"| {name} | {load_['tokens_per_s']:.0f} | {load_['requests_per_s']:.1f} | "
              f"{load_['ttft_p50_ms']:.0f} / {load_['ttft_p95_ms']:.0f} | {load_['tpot_p50_ms']:.1f} / "
              f"{load_['tpot_p95_ms']:.1f} | {load_['no_text']} | {load_['largest_batch']} | "
              f"{differ} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
