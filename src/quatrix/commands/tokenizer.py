"""`quatrix tokenizer train`: a byte-level BPE trained on corpora, saved to a directory."""

from __future__ import annotations

import argparse

from quatrix.data.text import read_documents
from quatrix.tokenizer import train_tokenizer
from quatrix.validation import positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="tokenizer_command", required=True)
    train = sub.add_parser("train", help="train on a corpus and save to a directory")
    train.add_argument("--data", action="append", required=True, help="named corpus or path (repeatable)")
    train.add_argument("--vocab-size", type=positive_int, default=4096)
    train.add_argument("--out", required=True)


def main(args: argparse.Namespace) -> int:
    docs = [doc for source in args.data for doc in read_documents(source)]
    tok = train_tokenizer(docs, args.vocab_size, args.out)
    sample = docs[0][:60]
    print(f"trained a {tok.vocab_size}-token byte-level BPE on {len(docs)} documents -> {args.out}")
    print(f"{sample!r} -> {len(tok.encode(sample))} tokens")
    return 0
