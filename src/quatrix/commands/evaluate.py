"""`quatrix eval`: perplexity (and bits per byte) of a checkpoint on corpora, or its accuracy
on a task's held-out items with the baselines that say what the accuracy means."""

from __future__ import annotations

import argparse
import json

from quatrix.eval.perplexity import evaluate_checkpoint
from quatrix.eval.tasks import evaluate_task
from quatrix.precision import PRECISIONS, autocast_context, resolve_precision
from quatrix.pretrained import load_model_and_tokenizer
from quatrix.tasks import task_from_spec
from quatrix.validation import int_at_least, nonnegative_int, positive_float, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="checkpoint directory (with its tokenizer)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--data", action="append", help="named corpus or path (repeatable): perplexity")
    what.add_argument("--task", help="NAME[:key=value,...] (a reasoning-gym task, visual_qa or transcribe): "
                                     "accuracy on its held-out items")
    p.add_argument("--split", choices=["val", "train", "all"], default="val")
    p.add_argument("--seq-len", type=int_at_least(2), default=128)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--max-batches", type=positive_int, default=None)
    p.add_argument("--cache-dir", default=".token_cache")
    p.add_argument("--n", type=positive_int, default=200, help="--task: held-out items")
    p.add_argument("--pass-k", type=positive_int, default=None, help="--task: also pass@k from k samples per item")
    p.add_argument("--temperature", type=positive_float, default=1.0, help="--task: sampling for pass@k")
    p.add_argument("--max-new-tokens", type=positive_int, default=64, help="--task: tokens per answer")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="bf16 autocast for the forward passes (auto: where the device has native bf16)")
    p.add_argument("--json", action="store_true")


def main(args: argparse.Namespace) -> int:
    """Perplexity (and bits per byte, comparable across tokenizers) of a checkpoint, or its
    accuracy on a task's held-out items."""
    if args.task:
        return eval_task(args)
    result = evaluate_checkpoint(args.ckpt, args.data, args.split, args.seq_len, args.batch_size, args.max_batches,
                                 args.cache_dir, precision=args.precision)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{'+'.join(args.data)} ({args.split}): loss {result['loss']:.4f}  perplexity {result['perplexity']:.2f}  "
              f"bits/byte {result['bits_per_byte']:.4f}  over {result['tokens']:,} tokens")
    return 0


def eval_task(args: argparse.Namespace) -> int:
    model, tokenizer = load_model_and_tokenizer(args.ckpt)
    task = task_from_spec(args.task, args.seed, model.config)
    device = str(next(model.parameters()).device)
    with autocast_context(device, resolve_precision(args.precision, device)):
        result = evaluate_task(model, tokenizer, task, args.n, batch_size=args.batch_size,
                               max_new_tokens=args.max_new_tokens, pass_k=args.pass_k, temperature=args.temperature,
                               seed=args.seed, with_baselines=True)
    if args.json:
        print(json.dumps(result))
        return 0
    low, high = result["ci95"]
    base = result["baselines"]
    print(f"{args.task}: accuracy {result['accuracy']:.3f} (95% CI {low:.3f}-{high:.3f}) on {args.n} held-out items; "
          f"format {result['format_rate']:.3f}; mean completion {result['mean_completion_tokens']:.1f} tokens")
    blank = "audio" if "audio" in task.media else "images"
    text_only = f"; text only ({blank} zeroed) {base['text_only_accuracy']:.3f}" if "text_only_accuracy" in base else ""
    chance = f"; random transcript {base['chance_accuracy']:.3f}" if "chance_accuracy" in base else ""
    print(f"baselines: majority answer {base['majority_accuracy']:.3f}{text_only}{chance}")
    if "wer" in result:
        print(f"error rates (word / character): model {result['wer']:.3f} / {result['cer']:.3f}; majority "
              f"{base['majority_wer']:.3f} / {base['majority_cer']:.3f}; random transcript {base['chance_wer']:.3f} / "
              f"{base['chance_cer']:.3f}; audio zeroed {base['text_only_wer']:.3f} / {base['text_only_cer']:.3f}")
    if "accuracy_by_kind" in result:
        print(f"  {'kind':>10}  model  {'text only' if text_only else ''}  majority")
        for kind, accuracy in result["accuracy_by_kind"].items():
            blind = f"  {base['text_only_by_kind'][kind]:9.3f}" if text_only else ""
            print(f"  {kind:>10}  {accuracy:5.3f}{blind}  {base['majority_by_kind'][kind]:8.3f}")
    if args.pass_k:
        print(f"pass@{args.pass_k}: {result[f'pass@{args.pass_k}']:.3f} (temperature {args.temperature:g})")
    return 0
