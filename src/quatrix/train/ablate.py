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
import bisect
import json
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from quatrix.config import PRESETS, QuatrixConfig, preset
from quatrix.io import atomic_path, atomic_write_text
from quatrix.params import count_parameters, training_flops_per_token
from quatrix.precision import PRECISIONS
from quatrix.train.metrics import METRICS_NAME, SUMMARY_NAME, read_metrics
from quatrix.train.options import command_line
from quatrix.train.resume import CHECKPOINT_DIR
from quatrix.validation import int_at_least, nonnegative_int, positive_float, positive_int
from quatrix.variants import DEFAULT_HEADS, VARIANTS, variant_overrides

PERIODIC_EVAL_BATCHES = 20  # held-out batches of the evaluations during training (the curves, the gap)

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
def paired(values: list[float], reference: list[float]) -> dict[str, float]:
    """Per-seed differences against the reference: mean, sample std and the two-sided
    paired t-test p-value (scipy's ttest_rel; undefined with fewer than two seeds)."""
    from scipy import stats

    diffs = np.array(values) - np.array(reference)
    result = {"diffs": diffs.tolist(), "mean": float(diffs.mean()),
              "std": float(diffs.std(ddof=1)) if len(diffs) > 1 else float("nan")}
    result["p_value"] = float(stats.ttest_rel(values, reference).pvalue) if len(diffs) > 1 and diffs.any() else float("nan")
    return result


def late_drop(records: list[dict], fraction: float = 0.2) -> float:
    """How far the validation loss still fell over the last `fraction` of a run (nats): the
    evaluation at or before (1 - fraction) of the final step minus the final one. Near zero
    means the curve has flattened; NaN when the run has no evaluation that early."""
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    if not val:
        return float("nan")
    final_step, final = val[-1]
    earlier = [v for step, v in val if step <= final_step * (1 - fraction)]
    return earlier[-1] - final if earlier else float("nan")


def gap_curve(curves: list[list[dict]], reference: list[list[dict]]) -> dict[str, list[float]]:
    """The paired validation-loss difference against the reference at every periodic
    evaluation that all seeds share: per step, the mean and sample std over seeds of
    (variant - reference). A gap that has stopped moving means the ranking has settled even
    where the losses themselves still fall. `curves` and `reference` hold one metrics record
    list per seed, in the same seed order."""
    def val(records):
        return {r["step"]: r["val_loss"] for r in records if "val_loss" in r}

    pairs = [(val(a), val(b)) for a, b in zip(curves, reference, strict=True)]
    steps = sorted(set.intersection(*(set(a) & set(b) for a, b in pairs))) if pairs else []
    diffs = np.array([[a[s] - b[s] for s in steps] for a, b in pairs]).reshape(len(pairs), len(steps))
    std = diffs.std(axis=0, ddof=1) if len(pairs) > 1 else np.full(len(steps), np.nan)
    return {"steps": steps, "mean": diffs.mean(axis=0).tolist(), "std": std.tolist()}


def gap_at(curve: dict[str, list[float]], fraction: float) -> tuple[float, float]:
    """(mean, std) of a `gap_curve` at the last evaluation at or before `fraction` of its final step."""
    steps = curve["steps"]
    i = bisect.bisect_right(steps, fraction * steps[-1]) - 1 if steps else -1
    return (float("nan"), float("nan")) if i < 0 else (curve["mean"][i], curve["std"][i])


def mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def spread(mean: float, std: float, digits: int = 4, sign: str = "") -> str:
    """'mean ± std' for the tables; just the mean when there is no spread (one seed)."""
    text = f"{mean:{sign}.{digits}f}"
    return text if np.isnan(std) else f"{text} ± {std:.{digits}f}"


# ---------------------------------------------------------------------- runs
def run_dir(out: Path, name: str, seed: int) -> Path:
    return out / "runs" / name / f"seed{seed}"


def token_cache(args) -> Path:
    """The token files every run and evaluation of the ablation share."""
    return Path(args.out) / ".token_cache"


def warmup_steps(args) -> int:
    return args.warmup if args.warmup is not None else max(1, args.steps // 10)


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
    ref = results["variants"][args.reference]
    for name, v in results["variants"].items():
        v["paired_vs_reference"] = paired([v["val_loss"][str(s)] for s in seeds], [ref["val_loss"][str(s)] for s in seeds])
        v["val_gap_curve"] = gap_curve(curves[name], curves[args.reference])
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out / "results.md", results_markdown(results, args))
    plot_curves(out, curves, {n: v["val_gap_curve"] for n, v in results["variants"].items() if n != args.reference},
                args.reference)
    print((out / "results.md").read_text())
    return 0


# ---------------------------------------------------------------------- reports
def results_markdown(results: dict, args) -> str:
    seeds = results["seeds"]
    lines = [(f"# Ablation: {len(results['variants'])} variants x {len(seeds)} seeds ({args.preset}, {args.steps} steps, "
              f"warmup {warmup_steps(args)}, lr {args.lr:g}, match={results['match']})"), "",
             ("| variant | H | params | mixer params | val loss | val perplexity | fall, last 20% | tokens/s | peak MiB "
              "| cache floats/token |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, v in results["variants"].items():
        changed = "".join(f" ({k} {a}→{b})" for k, (a, b) in ((k, v["matched"][k]) for k in ("hidden_size", "num_layers")
                                                            if k in v["matched"]))
        loss = spread(*mean_std(list(v["val_loss"].values())))
        ppl = spread(*mean_std(list(v["val_perplexity"].values())), digits=2)
        fall = np.mean(list(v["val_drop_last_20pct"].values()))
        lines.append(f"| {name} | {v['hidden_size']}{changed} | {v['params_total']:,} | {v['params_mixer']:,} | "
                     f"{loss} | {ppl} | {fall:.4f} | {v['tokens_per_s']:,.0f} | {v['peak_memory_mib']:.0f} | "
                     f"{v['cache_floats_per_token']} |")
    lines += ["", ("`fall, last 20%`: how much the validation loss (nats, mean over seeds) still fell over the last "
                   "fifth of training; near zero once the curves have flattened."),
              "", f"Paired differences in validation loss against `{results['reference']}` (per seed; positive = worse):",
              "", "| variant | per-seed differences | mean ± std | paired t-test p |", "|---|---|---:|---:|"]
    for name, v in results["variants"].items():
        if name == results["reference"]:
            continue
        p = v["paired_vs_reference"]
        p_value = "n/a (one seed)" if np.isnan(p["p_value"]) else f"{p['p_value']:.3g}"
        lines.append(f"| {name} | {', '.join(f'{d:+.4f}' for d in p['diffs'])} | {spread(p['mean'], p['std'], sign='+')} | "
                     f"{p_value} |")
    fractions = (0.25, 0.5, 0.75, 1.0)
    lines += ["", (f"The same paired difference during training (periodic evaluation on {PERIODIC_EVAL_BATCHES} "
                   "batches, mean ± std over seeds) at a quarter, half, three quarters and all of the steps. Once it "
                   "stops moving the ranking has settled, even while the losses still fall:"),
              "", "| variant | " + " | ".join(f"{f:.0%}" for f in fractions) + " |", "|---|" + "---:|" * len(fractions)]
    for name, v in results["variants"].items():
        if name != results["reference"]:
            cells = [spread(*gap_at(v["val_gap_curve"], f), sign="+") for f in fractions]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ood = next(iter(results["variants"].values()))["ood_loss"]
    if ood:
        lines += ["", "Out-of-distribution validation loss (mean ± std over seeds):", "",
                  "| variant | " + " | ".join(ood) + " |", "|---|" + "---:|" * len(ood)]
        for name, v in results["variants"].items():
            cells = [spread(*mean_std(list(v["ood_loss"][d].values()))) for d in ood]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(out: Path, curves: dict[str, list[list[dict]]], gaps: dict[str, dict], reference: str) -> None:
    """Left: mean training loss (smoothed) and validation loss per variant against step.
    Right: each variant's paired validation-loss difference against the reference, ± std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, gap_ax) = plt.subplots(1, 2, figsize=(13, 5))
    for i, (name, runs) in enumerate(curves.items()):
        steps = [r["step"] for r in runs[0]]
        train = np.mean([[r["loss"] for r in run] for run in runs], axis=0)
        window = max(1, len(train) // 30)
        smooth = np.convolve(train, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1:], smooth, color=f"C{i}", lw=1, alpha=0.6)
        val_steps = [r["step"] for r in runs[0] if "val_loss" in r]
        val = np.mean([[r["val_loss"] for r in run if "val_loss" in r] for run in runs], axis=0)
        ax.plot(val_steps, val, "o-", color=f"C{i}", label=name, ms=3)
        if name in gaps:
            gap = gaps[name]
            mean, std = np.array(gap["mean"]), np.nan_to_num(np.array(gap["std"]))
            gap_ax.plot(gap["steps"], mean, "o-", color=f"C{i}", label=name, ms=3)
            gap_ax.fill_between(gap["steps"], mean - std, mean + std, color=f"C{i}", alpha=0.15)
    ax.set(xlabel="step", ylabel="loss (nats/token)", title="train (thin) and validation (dots), mean over seeds")
    gap_ax.axhline(0, color="k", lw=0.8)
    gap_ax.set(xlabel="step", ylabel="nats/token", title=f"validation loss minus {reference}'s, same seed (± std)")
    for a in (ax, gap_ax):
        a.grid(alpha=0.3)
        a.legend()
    fig.tight_layout()
    with atomic_path(out / "curves.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
