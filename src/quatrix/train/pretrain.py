"""Stage 1 of the Berry recipe: pretrain a Quatrix language model from scratch on text.

Reads in order: arguments -> set-up (devices, processes, seed) -> tokenizer and model ->
data -> resume -> loop -> save. Runs on a CPU with the `tiny` preset in minutes, and on one
or many GPUs through torchrun (DistributedDataParallel, each rank its own data shard):

    quatrix pretrain --preset tiny --steps 300 --out runs/tiny
    torchrun --nproc_per_node=8 -m quatrix.cli pretrain --preset berry-q0 --data shakespeare ...
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from quatrix.config import PRESETS, preset
from quatrix.data.images import ImageTextLoader, ImageTextSource
from quatrix.data.mixture import Mixture, parse_mixture
from quatrix.data.text import CORPORA, DEFAULT_CORPUS, TokenLoader, load_tokens, prepare_tokens
from quatrix.model import QuatrixLM
from quatrix.tokenizer import load_tokenizer
from quatrix.train import common


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="a JSON file of these options (command-line flags override it)")
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--mixer", choices=["qcompass", "mha", "mha_rank"], help="override the preset's mixer")
    p.add_argument("--q-heads", type=int)
    p.add_argument("--hidden-size", type=int, help="override the preset's width H")
    p.add_argument("--num-layers", type=int, help="override the preset's depth")
    p.add_argument("--savo", action="store_true", help="Q-Compass with Q-value content")
    p.add_argument("--data", action="append", help=f"named corpus ({', '.join(CORPORA)}) or path; repeatable "
                                                   f"(default: {DEFAULT_CORPUS})")
    p.add_argument("--image-data", help="image-text pairs: clevr, digits, a .jsonl or a folder (enables vision)")
    p.add_argument("--mixture", help="source weights per step, e.g. text=0.7,image=0.3 (default with "
                                     "--image-data: text=0.7,image=0.3; else text only)")
    p.add_argument("--tokenizer", default="gpt2", help="'gpt2' or a trained tokenizer directory")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps in all")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per step per process (before accumulation)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--optimizer", choices=["adamw", "muon"], default="adamw")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-batches", type=int, default=20)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/pretrain")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint exactly")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--cache-dir", default=None, help="token cache (default: OUT/../.token_cache)")
    p.add_argument("--sample-tokens", type=int, default=48, help="generate this many tokens at the end (0: none)")
    p.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # tests: die at this step


def main(args: argparse.Namespace) -> int:
    # ---------------------------------------------------------------- set-up
    d = common.setup_distributed(args.device)
    device = f"cuda:{d.local_rank}" if args.device.startswith("cuda") and d.world_size > 1 else args.device
    out = Path(args.out)
    if args.steps < 1 or args.batch_size < 1 or args.grad_accum < 1 or args.seq_len < 2:
        raise ValueError("--steps, --batch-size and --grad-accum must be >= 1, --seq-len >= 2")
    weights = parse_mixture(args.mixture or ("text=0.7,image=0.3" if args.image_data else "text=1"))
    if "image" in weights and not args.image_data:
        raise ValueError("--mixture uses image data: give --image-data (clevr, digits or a path)")
    if args.resume and not (out / common.CHECKPOINT_DIR).is_dir():
        raise FileNotFoundError(f"--resume: no checkpoint at {out / common.CHECKPOINT_DIR}")
    out.mkdir(parents=True, exist_ok=True)
    common.seed_everything(args.seed)

    # ---------------------------------------------------------------- tokenizer and model
    tokenizer = load_tokenizer(args.tokenizer)
    overrides = {"vocab_size": tokenizer.vocab_size, "use_gradient_checkpointing": args.grad_checkpointing}
    flags = {"mixer": args.mixer, "q_heads": args.q_heads, "hidden_size": args.hidden_size, "num_layers": args.num_layers}
    overrides.update({k: v for k, v in flags.items() if v is not None})
    if args.savo:
        overrides["q_value_content"] = True
    if "image" in weights:
        overrides["use_vision"] = True
    config = preset(args.preset, **overrides)
    if args.seq_len > config.max_seq_len:
        raise ValueError(f"--seq-len {args.seq_len} exceeds the preset's max_seq_len {config.max_seq_len}")
    model = QuatrixLM(config).to(device)
    if args.resume:
        state_model = QuatrixLM.from_pretrained(out / common.CHECKPOINT_DIR)
        if state_model.config != config:
            raise ValueError("--resume: the checkpoint's model config differs from this run's flags")
        model.load_state_dict(state_model.state_dict())
    if d.is_main:
        resolved = {"args": vars(args), "model": config.to_dict(), "world_size": d.world_size,
                    "tokenizer": {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size}}
        (out / "run_config.json").write_text(json.dumps(resolved, indent=2) + "\n")

    # ---------------------------------------------------------------- data
    sources = args.data or [DEFAULT_CORPUS]
    cache_dir = Path(args.cache_dir) if args.cache_dir else out.parent / ".token_cache"
    if d.is_main:
        paths = prepare_tokens(sources, tokenizer, cache_dir)
    d.barrier()
    paths = prepare_tokens(sources, tokenizer, cache_dir)
    train_tokens, val_tokens = (load_tokens(paths[s], tokenizer.vocab_size) for s in ("train", "val"))
    loaders = {"text": TokenLoader(train_tokens, args.seq_len, args.batch_size, args.seed, d.rank, d.world_size)}
    if "image" in weights:
        images = ImageTextSource(args.image_data, config.image_size, args.seed)
        loaders["image"] = ImageTextLoader(images, tokenizer, args.seq_len, args.batch_size, args.seed, d.rank,
                                           d.world_size)
    loader = Mixture(loaders, weights, args.seed)

    # ---------------------------------------------------------------- optimizer, resume
    optimizers = common.build_optimizers(model, args.optimizer, args.lr, args.weight_decay)
    start = 0
    if args.resume:
        state = common.load_checkpoint_state(out / common.CHECKPOINT_DIR)
        for opt, opt_state in zip(optimizers, state["optimizers"]):
            opt.load_state_dict(opt_state)
        loader.load_state_dict(state["loader"])
        common.restore_rng(state["rng"])
        start = state["step"]
    train_model = model
    if args.compile:
        train_model = torch.compile(train_model)
    if d.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(train_model, device_ids=[d.local_rank] if "cuda" in device else None,
                                              find_unused_parameters=len(weights) > 1)  # text steps skip vision
    metrics = common.Metrics(out, resume_step=start if args.resume else None) if d.is_main else None
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if "cuda" in device else contextlib.nullcontext()

    # ---------------------------------------------------------------- loop
    tokens_per_step = args.batch_size * args.grad_accum * args.seq_len * d.world_size
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, disable=not d.is_main, desc="pretrain")
    last_saved = start
    for step in bar:
        t0 = time.perf_counter()
        lr = common.set_lr(optimizers, common.lr_factor(step, args.warmup, args.steps))
        loss_sum = torch.zeros((), device=device)
        for micro in range(args.grad_accum):
            source, batch = loader.next_batch(step)
            batch = {k: v.to(device) for k, v in batch.items()}
            sync = contextlib.nullcontext() if micro == args.grad_accum - 1 or d.world_size == 1 else train_model.no_sync()
            with sync, autocast:
                loss = train_model(**batch)["loss"] / args.grad_accum
            with sync:
                loss.backward()
            loss_sum += loss.detach()
        loss_value = float(d.mean(loss_sum))
        if not math.isfinite(loss_value):
            bar.close()
            print(f"pretrain: loss became {loss_value} at step {step + 1}; stopping. The last good checkpoint "
                  f"(step {last_saved}) is in {out / common.CHECKPOINT_DIR}; lower --lr or check the data.",
                  file=sys.stderr)
            return 1
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        done = step + 1
        record = {"step": done, "loss": loss_value, "source": source, "lr": lr, "grad_norm": grad_norm,
                  "tokens_per_s": tokens_per_step / (time.perf_counter() - t0)}
        if done % args.eval_every == 0 or done == args.steps:
            val = common.evaluate_tokens(model, val_tokens, args.seq_len, args.batch_size,
                                         max_batches=args.eval_batches, device=device)
            record.update(val_loss=val["loss"], val_perplexity=val["perplexity"])
        if d.is_main:
            metrics.log(record)
            bar.set_postfix(loss=f"{loss_value:.3f}", **({"val": f"{record['val_loss']:.3f}"} if "val_loss" in record else {}))
        if args.stop_after is not None and done >= args.stop_after:
            return 0  # as if killed: no checkpoint for this step
        if done % args.save_every == 0 or done == args.steps:
            if d.is_main:
                common.save_checkpoint(out, model, tokenizer, optimizers, done, loader.state_dict(), vars(args))
            last_saved = done
            d.barrier()

    # ---------------------------------------------------------------- save
    if d.is_main:
        metrics.close()
        common.plot_losses(metrics.path, out / "loss.png")
        common.write_summary(out, metrics.path, device)
        last = common.read_metrics(metrics.path)[-1]
        print(f"pretrain: {args.steps} steps, train loss {last['loss']:.3f}, val loss {last.get('val_loss', float('nan')):.3f} "
              f"(perplexity {last.get('val_perplexity', float('nan')):.1f}); checkpoint {out / common.CHECKPOINT_DIR}")
        if args.sample_tokens:
            print_sample(model, tokenizer, val_tokens, args.sample_tokens, args.seed)
    common.teardown_distributed(d)
    return 0


def print_sample(model, tokenizer, val_tokens, n: int, seed: int) -> None:
    """Continue the first line of held-out text, to see what the model learned."""
    prompt = [int(t) for t in val_tokens[:16]]
    gen = model.generate([prompt], n, temperature=0.8, top_k=50, generator=torch.Generator().manual_seed(seed),
                         stop_token_ids=[tokenizer.eot_id])
    print("sample:", repr(tokenizer.decode(prompt)), "->", repr(tokenizer.decode(gen.tokens[0])))
