"""Stage 1 of the Berry recipe: pretrain a Quatrix language model from scratch on text.

Reads in order: arguments -> set-up (devices, processes, seed) -> tokenizer and model ->
data -> resume -> loop -> save. Runs on a CPU with the `tiny` preset in minutes, and on one
or many GPUs through torchrun (DistributedDataParallel, each rank its own data shard):

    quatrix pretrain --preset tiny --steps 300 --out runs/tiny
    torchrun --nproc_per_node=8 -m quatrix.cli pretrain --preset berry-q0 --data shakespeare ...
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from quatrix.config import MIXERS, PRESETS, QuatrixConfig, preset
from quatrix.data.images import ImageTextLoader, ImageTextSource
from quatrix.data.mixture import Mixture, parse_mixture
from quatrix.data.text import CORPORA, DEFAULT_CORPUS, TokenLoader, load_tokens, prepare_tokens
from quatrix.eval.perplexity import evaluate_tokens
from quatrix.model import QuatrixLM
from quatrix.tokenizer import load_tokenizer
from quatrix.train import common
from quatrix.validation import nonnegative_int, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="a JSON file of these options (command-line flags override it)")
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--mixer", choices=MIXERS, help="override the preset's mixer")
    p.add_argument("--q-heads", type=positive_int)
    p.add_argument("--hidden-size", type=positive_int, help="override the preset's width H")
    p.add_argument("--num-layers", type=positive_int, help="override the preset's depth")
    p.add_argument("--savo", action="store_true", help="Q-Compass with Q-value content")
    p.add_argument("--data", action="append", help=f"named corpus ({', '.join(CORPORA)}) or path; repeatable "
                                                   f"(default: {DEFAULT_CORPUS})")
    p.add_argument("--image-data", help="image-text pairs: clevr, digits, a .jsonl or a folder (enables vision)")
    p.add_argument("--mixture", help="source weights per step, e.g. text=0.7,image=0.3 (default with "
                                     "--image-data: text=0.7,image=0.3; else text only)")
    p.add_argument("--tokenizer", default="gpt2", help="'gpt2' or a trained tokenizer directory")
    common.add_run_arguments(p, steps=300, batch_size=16, seq_len=128, lr=3e-3, warmup=20, eval_every=100,
                             save_every=100, out="runs/pretrain")
    p.add_argument("--eval-batches", type=positive_int, default=20)
    p.add_argument("--cache-dir", default=None, help="token cache (default: OUT/../.token_cache)")
    p.add_argument("--sample-tokens", type=nonnegative_int, default=48,
                   help="generate this many tokens at the end (0: none)")
    p.add_argument("--stop-after", type=positive_int, default=None, help=argparse.SUPPRESS)  # tests: die here


def main(args: argparse.Namespace) -> int:
    return common.run_stage(args, run)


def run(args: argparse.Namespace, d: common.Dist) -> int:
    # ---------------------------------------------------------------- set-up
    out = Path(args.out)
    weights = parse_mixture(args.mixture or ("text=0.7,image=0.3" if args.image_data else "text=1"))
    if "image" in weights and not args.image_data:
        raise ValueError("--mixture uses image data: give --image-data (clevr, digits or a path)")
    device, checkpoint = common.prepare_run(args, d, out, "pretrain")

    # ---------------------------------------------------------------- tokenizer and model
    tokenizer = load_tokenizer(args.tokenizer)
    config = model_config(args, tokenizer.vocab_size, weights)
    model = QuatrixLM(config).to(device)
    common.freeze_unused_plugins(model, weights)
    if d.is_main:
        common.write_run_config(out, args, config, tokenizer, d)

    # ---------------------------------------------------------------- data
    loader, val_tokens = build_data(args, tokenizer, config, weights, out, d)

    # ---------------------------------------------------------------- optimizer, resume
    optimizers = common.build_optimizers(model, args.optimizer, args.lr, args.weight_decay)
    start = common.restore(checkpoint, model, optimizers, loader, config) if checkpoint else 0
    train_model = common.wrap_model(model, args.compile, d, device, uneven_plugins=len(weights) > 1)
    metrics = common.Metrics(out, resume_step=start if args.resume else None) if d.is_main else None

    # ---------------------------------------------------------------- loop
    def evaluate() -> dict:
        val = evaluate_tokens(model, val_tokens, args.seq_len, args.batch_size, max_batches=args.eval_batches,
                              device=device)
        return {"val_loss": val["loss"], "val_perplexity": val["perplexity"]}

    status = common.train_loop(args, d, device, out, model, train_model, tokenizer, optimizers, loader, metrics, start,
                               stage="pretrain", evaluate=evaluate)

    # ---------------------------------------------------------------- save
    if d.is_main:
        metrics.close()
        if status == 0 and args.stop_after is None:
            report(args, out, model, tokenizer, val_tokens, metrics.path, device)
    return status


def model_config(args, vocab_size: int, weights: dict[str, float]) -> QuatrixConfig:
    """The preset with the flags' overrides; vision is switched on by image data."""
    overrides = {"vocab_size": vocab_size, "use_gradient_checkpointing": args.grad_checkpointing}
    flags = {"mixer": args.mixer, "q_heads": args.q_heads, "hidden_size": args.hidden_size, "num_layers": args.num_layers}
    overrides.update({k: v for k, v in flags.items() if v is not None})
    if args.savo:
        overrides["q_value_content"] = True
    if "image" in weights:
        overrides["use_vision"] = True
    config = preset(args.preset, **overrides)
    if args.seq_len > config.max_seq_len:
        raise ValueError(f"--seq-len {args.seq_len} exceeds the preset's max_seq_len {config.max_seq_len}")
    return config


def build_data(args, tokenizer, config: QuatrixConfig, weights: dict[str, float], out: Path, d: common.Dist):
    """The step-wise mixture of sources, and the held-out text tokens."""
    sources = args.data or [DEFAULT_CORPUS]
    cache_dir = Path(args.cache_dir) if args.cache_dir else out.parent / ".token_cache"
    if d.is_main:  # one process tokenizes; the others wait, then read the same files
        prepare_tokens(sources, tokenizer, cache_dir)
    d.barrier()
    paths = prepare_tokens(sources, tokenizer, cache_dir)
    train_tokens, val_tokens = (load_tokens(paths[s], tokenizer.vocab_size) for s in ("train", "val"))
    loaders = {"text": TokenLoader(train_tokens, args.seq_len, args.batch_size, args.seed, d.rank, d.world_size)}
    if "image" in weights:
        images = ImageTextSource(args.image_data, config.image_size, args.seed)
        loaders["image"] = ImageTextLoader(images, tokenizer, args.seq_len, args.batch_size, args.seed, d.rank,
                                           d.world_size)
    return Mixture(loaders, weights, args.seed), val_tokens


def report(args, out: Path, model, tokenizer, val_tokens, metrics_path: Path, device: str) -> None:
    """Loss plot, summary.json, a one-line result and a sample from the model."""
    common.plot_losses(metrics_path, out / common.LOSS_PLOT_NAME)
    common.write_summary(out, metrics_path, device)
    last = common.read_metrics(metrics_path)[-1]
    print(f"pretrain: {args.steps} steps, train loss {last['loss']:.3f}, val loss {last.get('val_loss', float('nan')):.3f} "
          f"(perplexity {last.get('val_perplexity', float('nan')):.1f}); checkpoint {out / common.CHECKPOINT_DIR}")
    if args.sample_tokens:
        print_sample(model, tokenizer, val_tokens, args.sample_tokens, args.seed)


def print_sample(model, tokenizer, val_tokens, n: int, seed: int) -> None:
    """Continue the first line of held-out text, to see what the model learned."""
    prompt = [int(t) for t in val_tokens[:16]]
    n = min(n, model.config.max_seq_len - len(prompt))
    gen = model.generate([prompt], n, temperature=0.8, top_k=50, generator=torch.Generator().manual_seed(seed),
                         stop_token_ids=[tokenizer.eot_id])
    print("sample:", repr(tokenizer.decode(prompt)), "->", repr(tokenizer.decode(gen.tokens[0])))
