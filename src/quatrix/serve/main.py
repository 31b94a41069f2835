"""`quatrix serve --ckpt CKPT`: load the checkpoint, build the scheduler and the app, run uvicorn."""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path


def main(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from quatrix.serve.app import create_app, scheduler_for
    except ImportError as e:
        raise ValueError(f"serve needs FastAPI and uvicorn: pip install 'quatrix[serve]' ({e})") from None
    import torch

    from quatrix.precision import autocast_context, resolve_precision
    from quatrix.tokenizer import has_tokenizer, load_model_and_tokenizer

    if not has_tokenizer(args.ckpt):
        raise FileNotFoundError(f"{args.ckpt}: no tokenizer saved beside the model; serve needs one")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_model_and_tokenizer(args.ckpt, map_location=device)
    precision = resolve_precision(args.precision, device)
    scheduler = scheduler_for(model, tokenizer, max_batch=args.max_batch, max_queue=args.max_queue,
                              precision=partial(autocast_context, device, precision))
    name = args.model_name or Path(args.ckpt).resolve().name
    app = create_app(scheduler, model_name=name, api_key=args.api_key, max_body_bytes=int(args.max_body_mb * 2**20),
                     max_tokens_default=args.max_tokens)
    where = "all interfaces" if args.host in ("0.0.0.0", "::") else args.host
    print(f"quatrix serve: {name} ({model.num_parameters():,} parameters, {device}, {precision}) on "
          f"http://{args.host}:{args.port}/ ({where}); API at /v1", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
