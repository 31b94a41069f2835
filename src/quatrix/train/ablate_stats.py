"""The statistics and the report of `quatrix ablate`: paired differences against the
reference variant, how far the validation loss still falls, the gap during training,
results.md and curves.png."""

from __future__ import annotations

import bisect
from pathlib import Path

import numpy as np

from quatrix.io import atomic_path

PERIODIC_EVAL_BATCHES = 20  # held-out batches of the evaluations during training (the curves, the gap)


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


def budget_curve(records: list[dict], flops_per_token: float) -> dict[str, list[float]]:
    """A run's validation loss against its cumulative training time and FLOPs: the time of a
    step is its tokens over its tokens/s (training only: evaluations and checkpoints are
    left out), its FLOPs `flops_per_token` times its tokens."""
    seconds = flops = 0.0
    curve: dict[str, list[float]] = {"seconds": [], "flops": [], "val_loss": []}
    for r in records:
        seconds += r["tokens"] / r["tokens_per_s"]
        flops += flops_per_token * r["tokens"]
        if "val_loss" in r:
            curve["seconds"].append(seconds)
            curve["flops"].append(flops)
            curve["val_loss"].append(r["val_loss"])
    return curve


def at_budget(curve: dict[str, list[float]], axis: str, budget: float) -> float:
    """The validation loss at `budget` seconds or FLOPs, interpolated linearly between the
    evaluations around it (NaN before the first one)."""
    xs, ys = curve[axis], curve["val_loss"]
    if not xs or budget < xs[0]:
        return float("nan")
    return float(np.interp(budget, xs, ys))


def equal_budget(curves: dict[str, list[dict]], reference: str, seeds: list[int], axis: str) -> dict:
    """Every variant's validation loss at the same training time (axis="seconds") or FLOPs
    ("flops"): the budget is the smallest any run reached (every run has a curve up to it),
    and each variant is paired with the reference seed by seed."""
    budget = min(c[axis][-1] for runs in curves.values() for c in runs)
    losses = {name: [at_budget(c, axis, budget) for c in runs] for name, runs in curves.items()}
    return {"budget": budget, "val_loss": {name: dict(zip(map(str, seeds), v)) for name, v in losses.items()},
            "paired": {name: paired(v, losses[reference]) for name, v in losses.items() if name != reference}}


def mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def spread(mean: float, std: float, digits: int = 4, sign: str = "") -> str:
    """'mean ± std' for the tables; just the mean when there is no spread (one seed)."""
    text = f"{mean:{sign}.{digits}f}"
    return text if np.isnan(std) else f"{text} ± {std:.{digits}f}"


def warmup_steps(args) -> int:
    """--warmup, or 10% of the steps when not given (at least one, and none in a one-step
    run): the same for every run."""
    return args.warmup if args.warmup is not None else min(max(1, args.steps // 10), args.steps - 1)


# ---------------------------------------------------------------------- the report
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
    own = {"seconds": "its runs' training seconds, per seed", "flops": "training FLOPs per token"}
    for axis, title, unit in (("seconds", "equal wall-clock", "s of training"), ("flops", "equal FLOPs",
                                                                                  "training FLOPs")):
        equal = results.get(f"equal_{axis}")
        if not equal:
            continue
        lines += ["", (f"Validation loss at {title}: every run's curve interpolated at {equal['budget']:.4g} {unit}, "
                       "the budget the quickest-finishing run reached (paired against the reference, seed by seed). "
                       "Timing is noisy on a shared machine: the runs of one study go one at a time, and the times "
                       "count training steps only."),
                  "", f"| variant | val loss | paired difference | paired t-test p | {own[axis]} |",
                  "|---|---:|---:|---:|---|"]
        for name, values in equal["val_loss"].items():
            p = equal["paired"].get(name)
            diff = "reference" if p is None else spread(p["mean"], p["std"], sign="+")
            p_value = "" if p is None or np.isnan(p["p_value"]) else f"{p['p_value']:.3g}"
            v = results["variants"][name]
            end = (", ".join(f"{t:.1f}" for t in v.get("training_seconds", {}).values()) if axis == "seconds"
                   else f"{v.get('training_flops_per_token', float('nan')) / 1e6:.3f} M")
            lines.append(f"| {name} | {spread(*mean_std(list(values.values())))} | {diff} | {p_value} | {end} |")
    ood = next(iter(results["variants"].values()))["ood_loss"]
    if ood:
        lines += ["", "Out-of-distribution validation loss (mean ± std over seeds):", "",
                  "| variant | " + " | ".join(ood) + " |", "|---|" + "---:|" * len(ood)]
        for name, v in results["variants"].items():
            cells = [spread(*mean_std(list(v["ood_loss"][d].values()))) for d in ood]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(out: Path, curves: dict[str, list[list[dict]]], gaps: dict[str, dict], reference: str,
                budgets: dict[str, list[dict]] | None = None) -> None:
    """Left: mean training loss (smoothed) and validation loss per variant against step.
    Middle: each variant's paired validation-loss difference against the reference, ± std.
    Right (with `budgets`, per variant the seeds' `budget_curve`s): validation loss against
    training time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3 if budgets else 2, figsize=(19 if budgets else 13, 5))
    ax, gap_ax = axes[0], axes[1]
    if budgets:
        for i, (name, runs) in enumerate(budgets.items()):
            for k, run in enumerate(runs):
                axes[2].plot(run["seconds"], run["val_loss"], "o-", color=f"C{i}", ms=3, alpha=0.7,
                             label=name if k == 0 else None)
        axes[2].set(xlabel="training seconds", ylabel="validation loss", title="against wall-clock (each seed)")
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
    for a in axes:
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend()
    fig.tight_layout()
    with atomic_path(out / "curves.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
