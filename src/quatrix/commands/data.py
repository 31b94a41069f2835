"""`quatrix data prepare`: tokenize a corpus of any size into shards for `quatrix pretrain --data DIR`."""

from __future__ import annotations

import argparse
import sys
import time

from tqdm import tqdm

from quatrix.data.prepare import prepare
from quatrix.validation import positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", required=True)
    prep = sub.add_parser("prepare", help="tokenize .txt/.jsonl/.jsonl.gz/.parquet files into token shards")
    prep.add_argument("--data", nargs="+", action="extend", required=True, help="files, folders or globs")
    prep.add_argument("--tokenizer", default="gpt2", help="gpt2, or a folder saved by `quatrix tokenizer train`")
    prep.add_argument("--out", required=True, help="the prepared folder (resumed if a prepare into it was killed)")
    prep.add_argument("--text-field", default="text", help="the text field of .jsonl records / .parquet column")
    prep.add_argument("--workers", type=positive_int, default=1, help="tokenizing processes")
    prep.add_argument("--shard-tokens", type=positive_int, default=100_000_000, help="tokens per shard (about)")
    prep.add_argument("--val-fraction", type=float, default=0.005, help="share of documents held out")


def main(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    with tqdm(unit="tok", unit_scale=True, desc="tokenizing", disable=None, file=sys.stderr) as bar:
        manifest = prepare(args.data, args.tokenizer, args.out, args.text_field, args.workers, args.shard_tokens,
                           args.val_fraction, progress=bar.update)
    seconds = time.perf_counter() - start
    tokens = manifest["tokens"]
    total = tokens["train"] + tokens["val"]
    print(f"{args.out}: {tokens['train']:,} train + {tokens['val']:,} held-out tokens in "
          f"{len(manifest['shards'])} shards ({manifest['dtype']}), {seconds:.1f} s, {total / max(seconds, 1e-9):,.0f} tokens/s")
    return 0
