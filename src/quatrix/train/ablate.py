"""`quatrix ablate`: a controlled, multi-seed comparison of Q-Compass variants and attention.

Every variant trains with the identical recipe, data, data order (the seed fixes it) and
budget; each (variant, seed) is one `quatrix pretrain` run in its own process and folder,
so an interrupted ablation restarts where it stopped (finished runs are kept, killed ones
resume from their checkpoint). Afterwards every run is evaluated on the whole held-out
split (and on `--eval-data` corpora), and the tables, paired statistics against a
reference variant, and the loss curves are written to DIR.

    quatrix ablate --variants qcompass,savo,mh-qcompass,mha_rank,mha --seeds 0,1,2 \\
        --preset tiny --steps 600 --data shakespeare --out runs/ablate
"""

from __future__ import annotations

import argparse
import json
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from quatrix.config import PRESETS, QuatrixConfig, preset
from quatrix.io import atomic_write_text
from quatrix.params import count_parameters, training_flops_per_token
from quatrix.precision import PRECISIONS
from quatrix.train.ablate_stats import (PERIODIC_EVAL_BATCHES, budget_curve, equal_budget, gap_curve, late_drop,
                                        paired, plot_curves, results_markdown, warmup_steps)
from quatrix.train import recall
from quatrix.train.recall import RANK_RULES
from quatrix.train.metrics import METRICS_NAME, SUMMARY_NAME, read_metrics
from quatrix.train.options import command_line
from quatrix.train.resume import CHECKPOINT_DIR
from quatrix.validation import int_at_least, nonnegative_int, positive_float, positive_int
from quatrix.variants import DEFAULT_HEADS, VARIANTS, variant_overrides


MATCH_TOLERANCE = 0.02


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--variants", default="qcompass,savo,mh-qcompass,mha_rank,mha",
                   help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--reference", default="mha", help="variant the paired differences are taken against")
    p.add_argument("--heads", type=positive_int, default=DEFAULT_HEADS, help="heads of the multi-head variants")
    p.add_argument("--match", choices=["none", "params", "flops"], default="none",
                   help="resize each variant (width, else depth) until its total parameters (or training FLOPs) "
                        "match the reference within 2%%")
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--data", action="append", help="training corpus (named or path; default shakespeare)")
    p.add_argument("--eval-data", default="", help="extra corpora to evaluate on, comma-separated (out of distribution)")
    p.add_argument("--tokenizer", default="gpt2")
    p.add_argument("--steps", type=positive_int, default=300)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--seq-len", type=int_at_least(2), default=128)
    p.add_argument("--lr", type=positive_float, default=3e-3)
    p.add_argument("--warmup", type=nonnegative_int, default=None,
                   help="linear warmup steps before the cosine decay (default: 10%% of --steps; a short warmup at "
                        "this peak learning rate makes attention runs spike and the seeds diverge)")
    p.add_argument("--eval-every", type=nonnegative_int, default=50)
    p.add_argument("--eval-batches", type=positive_int, default=200, help="batches of the final held-out evaluation")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="of every run (see quatrix pretrain)")
    p.add_argument("--out", default="runs/ablate")
    recall = p.add_argument_group("recall study (--task mqar:...; quatrix.train.recall)")
    recall.add_argument("--task", action="append", default=[],
                        help="mqar:seq_len=L,kv_pairs=K[,vocab=V,alpha=A,n_train=N,n_test=M,...] (repeatable): "
                             "train the variants on multi-query associative recall instead of text")
    recall.add_argument("--d-model", default="64,128,256", help="model widths, comma-separated")
    recall.add_argument("--layers", type=positive_int, default=2)
    recall.add_argument("--no-mlp", action="store_true", help="the MLP replaced by the identity, as in Zoology")
    recall.add_argument("--lrs", default="1e-4,4.6e-4,2.2e-3,1e-2", help="learning rates, comma-separated (the best "
                                                                      "one per cell is reported)")
    recall.add_argument("--rank-rule", default="quarter",
                        help=f"routing rank of the ranked variants: {' or '.join(RANK_RULES)} (d_model / 4 or "
                             "d_model), or both, comma-separated (a row each)")
    recall.add_argument("--epochs", type=positive_int, default=48,
                        help="passes over the training examples at most; the cosine decays to 0 over all of them, "
                             "so a short horizon can end learning on a plateau: at 16 epochs attention at d=128 "
                             "stayed at accuracy 0.27, and with the decay stretched over 48 it solved the task in "
                             "fewer steps than the 16 epochs had (docs/results.md, 'Recall (MQAR)')")
    recall.add_argument("--jobs", type=positive_int, default=1, help="cells trained at once (1 thread each)")


# ---------------------------------------------------------------------- variants
def variant_config(name: str, args, vocab_size: int, **sizes) -> QuatrixConfig:
    return preset(args.preset, vocab_size=vocab_size, **variant_overrides(name, args.heads), **sizes)


def parameter_counts(config: QuatrixConfig) -> dict[str, int]:
    """count_parameters of the language model, built on the meta device (nothing allocated)."""
    from quatrix.model import QuatrixLM

    with torch.device("meta"):
        return count_parameters(QuatrixLM(config))


def cost(config: QuatrixConfig, match: str, seq_len: int) -> float:
    if match == "flops":
        return training_flops_per_token(config, seq_len)
    return parameter_counts(config)["total"]


def match_size(name: str, args, vocab_size: int, target: float) -> tuple[QuatrixConfig, dict]:
    """The (width, depth) whose cost is closest to `target`, preferring the preset's depth:
    widths from H/2 to 2H in steps of the head count, depths within two of the preset's.
    Cost grows with width, so each depth is a bisection. Reports which dimensions changed."""
    base = variant_config(name, args, vocab_size)
    H, N = base.hidden_size, base.num_layers
    step = base.q_heads  # the width must split evenly over the heads
    widths = list(range(max(step, (H // 2) // step * step), 2 * H + 1, step))
    best = None
    for layers in [N] + [n for n in range(max(1, N - 2), N + 3) if n != N]:
        def config_at(i, layers=layers):
            return variant_config(name, args, vocab_size, hidden_size=widths[i], num_layers=layers)

        lo, hi = 0, len(widths) - 1
        while lo < hi:  # first width whose cost reaches the target
            mid = (lo + hi) // 2
            if cost(config_at(mid), args.match, args.seq_len) < target:
                lo = mid + 1
            else:
                hi = mid
        for i in {max(0, lo - 1), lo}:
            config = config_at(i)
            gap = abs(cost(config, args.match, args.seq_len) - target) / target
            if best is None or gap < best[0]:
                best = (gap, config)
        if best[0] <= MATCH_TOLERANCE:
            break
    gap, config = best
    if gap > MATCH_TOLERANCE:
        raise ValueError(f"{name}: no width or depth brings its {args.match} within {MATCH_TOLERANCE:.0%} of the reference")
    changed = {k: [getattr(base, k), getattr(config, k)] for k in ("hidden_size", "num_layers")
               if getattr(base, k) != getattr(config, k)}
    return config, {**changed, "gap": gap}


def plan(args, vocab_size: int) -> dict[str, tuple[QuatrixConfig, dict]]:
    """Each variant's config and what matching changed."""
    names = args.variants.split(",")
    if args.reference not in names:
        raise ValueError(f"--reference {args.reference!r} must be one of --variants")
    configs = {n: (variant_config(n, args, vocab_size), {}) for n in names}
    if args.match != "none":
        target = cost(configs[args.reference][0], args.match, args.seq_len)
        for n in names:
            if n != args.reference:
                configs[n] = match_size(n, args, vocab_size, target)
    return configs


# ---------------------------------------------------------------------- statistics
def run_dir(out: Path, name: str, seed: int) -> Path:
    return out / "runs" / name / f"seed{seed}"


def token_cache(args) -> Path:
    """The token files every run and evaluation of the ablation share."""
    return Path(args.out) / ".token_cache"


@dataclass(frozen=True)
class PretrainRun:
    """One (variant, seed) of an ablation, as the `quatrix pretrain` options it runs with."""

    preset: str
    tokenizer: str
    mixer: str
    q_heads: int
    hidden_size: int
    num_layers: int
    savo: bool
    steps: int
    batch_size: int
    seq_len: int
    lr: float
    warmup: int
    eval_every: int
    eval_batches: int
    save_every: int
    seed: int
    device: str
    out: str
    cache_dir: str
    data: tuple[str, ...] = ()
    sample_tokens: int = 0
    precision: str = "auto"

    def command(self, resume: bool) -> list[str]:
        return command_line("pretrain", {**asdict(self), "resume": resume})


def pretrain_run(args, config: QuatrixConfig, seed: int, directory: Path) -> PretrainRun:
    """The identical recipe for every variant: only the model fields differ."""
    return PretrainRun(
        preset=args.preset, tokenizer=args.tokenizer, mixer=config.mixer, q_heads=config.q_heads,
        hidden_size=config.hidden_size, num_layers=config.num_layers, savo=config.q_value_content,
        steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr, warmup=warmup_steps(args),
        eval_every=args.eval_every, eval_batches=PERIODIC_EVAL_BATCHES, save_every=args.eval_every, seed=seed,
        device="cuda" if torch.cuda.is_available() else "cpu", out=str(directory), cache_dir=str(token_cache(args)),
        data=tuple(args.data or ()), precision=args.precision)


def train(args, name: str, config: QuatrixConfig, seed: int, directory: Path) -> None:
    """One pretraining run in its own process; skipped when finished, resumed when killed."""
    if (directory / SUMMARY_NAME).is_file():
        return
    resume = directory.is_dir()
    print(f"ablate: training {name} seed {seed}" + (" (resuming)" if resume else ""), flush=True)
    cmd = pretrain_run(args, config, seed, directory).command(resume)
    result = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ablate: {name} seed {seed} failed:\n{result.stderr[-3000:]}")


def evaluate(args, directory: Path, data: list[str]) -> dict:
    """Held-out loss of a finished run on `data`, computed once and kept in its eval.json."""
    from quatrix.eval.perplexity import evaluate_checkpoint

    cache_path = directory / "eval.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    key = json.dumps([data, args.seq_len, args.eval_batches])
    if key not in cache:
        cache[key] = evaluate_checkpoint(directory / CHECKPOINT_DIR, data, "val", args.seq_len, args.batch_size,
                                         args.eval_batches, token_cache(args))
        atomic_write_text(cache_path, json.dumps(cache, indent=2) + "\n")
    return cache[key]


def main(args: argparse.Namespace) -> int:
    if args.task:
        return recall.main(args)
    from quatrix.data.text import DEFAULT_CORPUS, prepare_tokens
    from quatrix.engine import cache_floats_per_token
    from quatrix.tokenizer import load_tokenizer

    out = Path(args.out)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds repeats a seed: {args.seeds!r}")
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if not 0 <= warmup_steps(args) < args.steps:
        raise ValueError(f"--warmup must be in [0, --steps), got {args.warmup}")
    tokenizer = load_tokenizer(args.tokenizer)
    configs = plan(args, tokenizer.vocab_size)
    data = args.data or [DEFAULT_CORPUS]
    ood = [d for d in args.eval_data.split(",") if d]
    for sources in [data] + [[d] for d in ood]:  # tokenized once, now: bad data fails before any training
        prepare_tokens(sources, tokenizer, token_cache(args))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "ablate_config.json", json.dumps({"args": vars(args), "models": {
        n: {"config": c.to_dict(), "matched": m} for n, (c, m) in configs.items()}}, indent=2) + "\n")
    results: dict = {"reference": args.reference, "match": args.match, "seeds": seeds, "variants": {}}
    for seed in seeds:  # seed-major: an interrupted ablation has complete seeds for every variant
        for name, (config, _) in configs.items():
            train(args, name, config, seed, run_dir(out, name, seed))
    curves = {name: [read_metrics(run_dir(out, name, s) / METRICS_NAME) for s in seeds] for name in configs}
    for name, (config, matched) in configs.items():
        counts = parameter_counts(config)
        runs = {}
        for seed, records in zip(seeds, curves[name], strict=True):
            directory = run_dir(out, name, seed)
            summary = json.loads((directory / SUMMARY_NAME).read_text())
            val = evaluate(args, directory, data)
            runs[seed] = {"val_loss": val["loss"], "val_perplexity": val["perplexity"], "summary": summary,
                          "late_drop": late_drop(records),
                          "ood": {d: evaluate(args, directory, [d])["loss"] for d in ood}}
        results["variants"][name] = {
            "params_total": counts["total"], "params_mixer": counts["mixers"],
            "cache_floats_per_token": cache_floats_per_token(config), "matched": matched,
            "hidden_size": config.hidden_size, "num_layers": config.num_layers, "q_heads": config.q_heads,
            "val_loss": {str(s): r["val_loss"] for s, r in runs.items()},
            "val_perplexity": {str(s): r["val_perplexity"] for s, r in runs.items()},
            "ood_loss": {d: {str(s): r["ood"][d] for s, r in runs.items()} for d in ood},
            "val_drop_last_20pct": {str(s): r["late_drop"] for s, r in runs.items()},
            "tokens_per_s": float(np.mean([r["summary"]["tokens_per_s"] for r in runs.values()])),
            "peak_memory_mib": float(np.max([r["summary"]["peak_memory_mib"] for r in runs.values()])),
        }
    budgets = {name: [budget_curve(records, training_flops_per_token(configs[name][0], args.seq_len))
                      for records in curves[name]] for name in configs}
    for axis in ("seconds", "flops"):
        results[f"equal_{axis}"] = equal_budget(budgets, args.reference, seeds, axis)
    for name, v in results["variants"].items():  # where each run's curve ends: the budgets' raw material
        v["training_seconds"] = {str(s): c["seconds"][-1] for s, c in zip(seeds, budgets[name]) if c["seconds"]}
        v["training_flops_per_token"] = training_flops_per_token(configs[name][0], args.seq_len)
    ref = results["variants"][args.reference]
    for name, v in results["variants"].items():
        v["paired_vs_reference"] = paired([v["val_loss"][str(s)] for s in seeds], [ref["val_loss"][str(s)] for s in seeds])
        v["val_gap_curve"] = gap_curve(curves[name], curves[args.reference])
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out / "results.md", results_markdown(results, args))
    plot_curves(out, curves, {n: v["val_gap_curve"] for n, v in results["variants"].items() if n != args.reference},
                args.reference, budgets)
    print((out / "results.md").read_text())
    return 0


# ---------------------------------------------------------------------- reports
