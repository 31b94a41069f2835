"""`quatrix chat`: talk to a checkpoint from a terminal or a pipe (quatrix.session.chat_loop)."""

from __future__ import annotations

import argparse
from functools import partial

from quatrix.precision import DTYPE_HELP, DTYPES, PRECISIONS, autocast_context, inference_dtype, resolve_precision
from quatrix.pretrained import has_tokenizer, load_model_and_tokenizer
from quatrix.session import ChatSession, chat_loop
from quatrix.validation import float_in, nonnegative_float, nonnegative_int, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="checkpoint directory (with its tokenizer)")
    p.add_argument("--system", help="system message")
    p.add_argument("--max-new-tokens", type=positive_int, default=128)
    p.add_argument("--temperature", type=nonnegative_float, default=0.7, help="0 = greedy")
    p.add_argument("--top-k", type=nonnegative_int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float_in(0.0, 1.0, low_open=True), default=0.95, help="1.0 = off")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--dtype", choices=DTYPES, default=None, help=DTYPE_HELP)
    p.add_argument("--compile", action="store_true",
                   help="decode with a torch.compile'd static-shape step (the first reply pays the compile)")


def main(args: argparse.Namespace) -> int:
    """Multi-turn chat: a line is a user turn; /reset, /system TEXT, /image PATH, /audio PATH, /quit."""
    if not has_tokenizer(args.ckpt):
        raise FileNotFoundError(f"{args.ckpt}: no tokenizer saved beside the model; chat needs one")
    model, tokenizer = load_model_and_tokenizer(args.ckpt)
    inference_dtype(model, args.dtype)
    session = ChatSession(model, tokenizer, system=args.system, max_new_tokens=args.max_new_tokens,
                          temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                          compile=args.compile)
    device = str(next(model.parameters()).device)
    return chat_loop(session, autocast=partial(autocast_context, device, resolve_precision(args.precision, device)))
