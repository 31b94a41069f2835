"""`quatrix serve --ckpt CKPT`: load the checkpoint, build the scheduler and the app, run uvicorn."""

from __future__ import annotations

import argparse
import contextlib
import threading
import time
from functools import partial
from pathlib import Path

from quatrix.precision import DTYPE_HELP, DTYPES, PRECISIONS, autocast_context, inference_dtype, resolve_precision
from quatrix.pretrained import has_tokenizer, load_model_and_tokenizer
from quatrix.validation import nonnegative_int, positive_float, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="checkpoint directory (with its tokenizer)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=nonnegative_int, default=8000)
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1/ (default: none)")
    p.add_argument("--model-name", help="the model id clients see (default: the checkpoint folder's name)")
    p.add_argument("--max-batch", type=positive_int, default=16, help="sequences decoded together")
    p.add_argument("--max-queue", type=nonnegative_int, default=64,
                   help="requests waiting for room beyond which the server answers 429")
    p.add_argument("--max-tokens", type=positive_int, default=256,
                   help="new tokens per reply when a request does not say")
    p.add_argument("--max-body-mb", type=positive_float, default=8.0, help="request body limit")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--dtype", choices=DTYPES, default=None, help=DTYPE_HELP)
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def main(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from quatrix.serve.app import create_app, scheduler_for
    except ImportError as e:
        raise ValueError(f"serve needs FastAPI and uvicorn: pip install 'quatrix[serve]' ({e})") from None
    import torch

    if not has_tokenizer(args.ckpt):
        raise FileNotFoundError(f"{args.ckpt}: no tokenizer saved beside the model; serve needs one")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_model_and_tokenizer(args.ckpt, map_location=device)
    inference_dtype(model, args.dtype)
    precision = resolve_precision(args.precision, device)
    scheduler = scheduler_for(model, tokenizer, max_batch=args.max_batch, max_queue=args.max_queue,
                              precision=partial(autocast_context, device, precision))
    name = args.model_name or Path(args.ckpt).resolve().name
    app = create_app(scheduler, model_name=name, api_key=args.api_key, max_body_bytes=int(args.max_body_mb * 2**20),
                     max_tokens_default=args.max_tokens)
    where = "all interfaces" if args.host in ("0.0.0.0", "::") else args.host
    weights = str(next(model.parameters()).dtype).removeprefix("torch.")
    print(f"quatrix serve: {name} ({model.num_parameters():,} parameters, {device}, {weights} weights, {precision}) on "
          f"http://{args.host}:{args.port}/ ({where}); API at /v1", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


@contextlib.contextmanager
def running_server(app, timeout: float = 30.0):
    """Serve `app` with uvicorn on a free loopback port in a background thread and yield its
    base URL (http://127.0.0.1:PORT); stop it on exit. For benchmarks and tests that drive
    the API with outside clients (lm-evaluation-harness, schemathesis, a browser)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not (server.started and server.servers):
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=timeout)
