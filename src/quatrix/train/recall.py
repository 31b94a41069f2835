"""`quatrix ablate --task mqar:...`: can a mixer recall in context? Zoology's MQAR study
(Arora et al., 2023, Figure 2) for every variant of quatrix.variants.

    quatrix ablate --task mqar:seq_len=64,kv_pairs=4 --task mqar:seq_len=128,kv_pairs=8 \\
        --variants qcompass,savo,mh-qcompass,mh-savo,mha_rank,mha --d-model 64,128,256 \\
        --layers 2 --no-mlp --lrs 1e-4,4.6e-4,2.2e-3,1e-2 --seeds 0 --out runs/recall

Every (task, variant, d_model, lr, seed) cell trains from scratch as Zoology trains: the
given depth, the MLP replaced by the identity with --no-mlp (QuatrixConfig.ffn_ratio=0),
learned positional embeddings, AdamW with weight decay 0.1, a cosine decay to 0 over the
run, and an early stop once test accuracy passes 0.99. A cell's accuracy is exact match
over every query of the test set (quatrix.data.mqar); the table reports, per variant and
width, the best learning rate's, as the paper does. Q-Compass routes at rank
r = d_model / 4 (--rank-rule quarter) or r = d_model (full), or both (--rank-rule quarter,full:
one more row per ranked variant), since rank is the knob it adds; full attention has no rank.

Cells run one at a time, or `--jobs N` at once (each with 1 thread; their wall-clock then
says less). A cell in training appends each evaluation (step, seconds, mean training loss since
the last one, test accuracy, learning rate) to OUT/cells/<cell>.jsonl and shows its progress, so
a long cell, or one stopped before its end, still says how far it got; curves.png draws every
finished cell's accuracy against steps. Each finished cell is written to results.json at once,
with its curve, so an interrupted study resumes with the cells it has not finished (a cell cut
short starts again, its curve file anew); resuming with another training recipe (epochs,
batch size, depth, ...) is refused, naming the fields that differ, so that one table never
mixes two recipes.
"""

from __future__ import annotations

import json
import math
import re
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from quatrix.config import QuatrixConfig
from quatrix.data.mqar import MQARSpec, recall_accuracy
from quatrix.io import atomic_path, atomic_write_text
from quatrix.model import QuatrixLM
from quatrix.progress import Progress
from quatrix.variants import VARIANTS, variant

RESULTS = "results.json"
CURVES = "cells"  # OUT/cells/<cell>.jsonl: one line per evaluation of a cell, written as it trains
RANK_RULES = ("quarter", "full")
EARLY_STOP = 0.99


@dataclass(frozen=True)
class Cell:
    task: str
    variant: str
    d_model: int
    lr: float
    seed: int
    rank_rule: str = "quarter"

    @property
    def key(self) -> str:
        rank = "" if self.rank_rule == "quarter" else f"|r={self.rank_rule}"
        return f"{self.task}|{self.variant}|{self.d_model}|{self.lr:g}|{self.seed}{rank}"

    @property
    def row(self) -> str:
        """The table row: the variant, and its rank rule where it is not the default."""
        return self.variant if self.rank_rule == "quarter" else f"{self.variant}|r={self.rank_rule}"

    @property
    def file_name(self) -> str:
        """The key with every character a file name should not hold replaced by '_'."""
        return re.sub(r"[^A-Za-z0-9.=+-]+", "_", self.key) + ".jsonl"


@dataclass(frozen=True)
class Recipe:
    layers: int = 2
    no_mlp: bool = True
    heads: int = 4
    epochs: int = 48  # the cosine's horizon too: a short one ends learning before the plateau is left
    batch_size: int = 64
    eval_every: int = 100  # steps between test evaluations (the early stop looks at them)


def cell_config(cell: Cell, spec: MQARSpec, recipe: Recipe) -> QuatrixConfig:
    rank = cell.d_model // 4 if cell.rank_rule == "quarter" else cell.d_model
    return QuatrixConfig(vocab_size=spec.vocab, hidden_size=cell.d_model, num_layers=recipe.layers,
                         max_seq_len=spec.seq_len, q_rank=rank, ffn_ratio=0 if recipe.no_mlp else 4,
                         **variant(cell.variant).overrides(recipe.heads))


def train_cell(cell: Cell, recipe: Recipe, threads: int | None = None, curve_dir: Path | None = None) -> dict:
    """Train one cell to the end of its epochs or the early stop; its record, with its curve (one
    entry per evaluation), which is also appended to curve_dir/<cell>.jsonl as it is measured."""
    if threads:
        torch.set_num_threads(threads)
    spec = MQARSpec.parse(cell.task)
    (train_x, train_y), (test_x, test_y) = spec.datasets()
    torch.manual_seed(cell.seed)
    model = QuatrixLM(cell_config(cell, spec, recipe))
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "emb" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "emb" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                                  lr=cell.lr, betas=(0.9, 0.98))
    steps_per_epoch = math.ceil(len(train_x) / recipe.batch_size)
    total = steps_per_epoch * recipe.epochs
    order = torch.Generator().manual_seed(cell.seed)
    curve_path = None
    if curve_dir is not None:
        curve_dir.mkdir(parents=True, exist_ok=True)
        curve_path = curve_dir / cell.file_name
        curve_path.write_text("")  # a cell cut short earlier starts its curve anew
    progress = Progress(cell.key, 0, total)
    curve: list[dict] = []
    start, step, accuracy, best, losses = time.perf_counter(), 0, 0.0, 0.0, []
    while step < total and best < EARLY_STOP:
        perm = torch.randperm(len(train_x), generator=order)
        for rows in perm.split(recipe.batch_size):
            lr = cell.lr * 0.5 * (1 + math.cos(math.pi * step / total))  # cosine from lr to 0 over the whole run
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = model(train_x[rows], labels=train_y[rows], check_values=False)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
            step += 1
            if step % recipe.eval_every == 0 or step == total:
                accuracy = recall_accuracy(model, test_x, test_y)
                best = max(best, accuracy)
                point = {"step": step, "seconds": round(time.perf_counter() - start, 2),
                         "loss": sum(losses) / len(losses), "accuracy": accuracy, "lr": lr}
                curve.append(point)
                losses = []
                if curve_path is not None:
                    with open(curve_path, "a") as f:
                        f.write(json.dumps(point) + "\n")
                progress.update(step, {"accuracy": accuracy, "loss": point["loss"]})
                if best >= EARLY_STOP or step == total:
                    break
    progress.close()
    return {**asdict(cell), "seq_len": spec.seq_len, "kv_pairs": spec.kv_pairs, "accuracy": best,
            "final_accuracy": accuracy, "steps": step, "params": model.num_parameters(),
            "q_rank": model.config.q_rank, "wall_s": time.perf_counter() - start, "curve": curve}


def run_study(cells: list[Cell], recipe: Recipe, out: Path, jobs: int = 1, log=print) -> list[dict]:
    """Train the cells results.json does not hold yet; every record the folder holds, these cells
    and earlier invocations' alike."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS
    done = {}
    if path.is_file():
        try:
            held = json.loads(path.read_text())
        except json.JSONDecodeError:
            held = None
        if not isinstance(held, dict) or not {"recipe", "cells"} <= held.keys():
            raise ValueError(f"{path} is damaged (not a study's results); move it away or choose another --out")
        differ = [f"{k} {held['recipe'].get(k)!r} there, {v!r} here" for k, v in asdict(recipe).items()
                  if held["recipe"].get(k) != v]
        if differ:
            raise ValueError(f"{path} holds a study trained with another recipe ({'; '.join(differ)}); "
                             "choose another --out, or the same flags")
        done = {r["key"]: r for r in held["cells"]}
    todo = [c for c in cells if c.key not in done]
    log(f"recall study: {len(cells)} cells, {len(cells) - len(todo)} already done, {len(todo)} to train")

    def keep(record: dict) -> None:
        done[record["key"]] = record
        log(f"  {record['key']}: accuracy {record['accuracy']:.3f} after {record['steps']} steps "
            f"({record['wall_s']:.0f} s)")
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"recipe": asdict(recipe), "cells": list(done.values())}, indent=1))

    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            records = pool.map(train_cell, todo, [recipe] * len(todo), [1] * len(todo), [out / CURVES] * len(todo))
            for cell, record in zip(todo, records):
                keep({**record, "key": cell.key})
    else:
        for cell in todo:
            keep({**train_cell(cell, recipe, curve_dir=out / CURVES), "key": cell.key})
    return list(done.values())


def row(record: dict) -> str:
    """A record's table row: its variant, and its rank rule where it is not the default (records
    written before cells had a rank rule were all d_model / 4)."""
    return Cell(record["task"], record["variant"], record["d_model"], record["lr"], record["seed"],
                record.get("rank_rule", "quarter")).row


def label(name: str) -> str:
    base, _, rule = name.partition("|r=")
    return VARIANTS[base].label + (", r = d_model" if rule == "full" else "")


def best_by_cell(records: list[dict]) -> dict[tuple, float]:
    """(task, row, d_model) -> the best accuracy over learning rates (mean over seeds)."""
    by_lr: dict[tuple, list[float]] = {}
    for r in records:
        by_lr.setdefault((r["task"], row(r), r["d_model"], r["lr"]), []).append(r["accuracy"])
    best: dict[tuple, float] = {}
    for (task, name, width, _), values in by_lr.items():
        key = (task, name, width)
        best[key] = max(best.get(key, 0.0), sum(values) / len(values))
    return best


def results_markdown(records: list[dict], recipe: Recipe) -> str:
    best = best_by_cell(records)
    tasks = list(dict.fromkeys(r["task"] for r in records))
    widths = sorted({r["d_model"] for r in records})
    lines = ["# Recall (MQAR): best test accuracy over learning rates", "",
             f"{recipe.layers} layers, {'no MLP' if recipe.no_mlp else 'MLP'}, routing rank d_model / 4 unless the "
             f"row says r = d_model, up to {recipe.epochs} epochs of batch {recipe.batch_size}, early stop at "
             f"{EARLY_STOP}; — where a cell was not trained.", ""]
    for task in tasks:
        lines += [f"## {task}", "", "| variant | " + " | ".join(f"d={w}" for w in widths) + " |",
                  "|---|" + "---:|" * len(widths)]
        for name in dict.fromkeys(row(r) for r in records if r["task"] == task):
            cells = [best.get((task, name, w)) for w in widths]
            lines.append(f"| {label(name)} | " +
                         " | ".join("—" if c is None else f"{c:.3f}" for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def row_colors(records: list[dict]) -> dict[str, str]:
    """One matplotlib color per table row, the same in every panel."""
    return {name: f"C{i % 10}" for i, name in enumerate(dict.fromkeys(row(r) for r in records))}


def panel_title(task: str) -> str:
    spec = MQARSpec.parse(task)
    return f"L={spec.seq_len}, K={spec.kv_pairs}, V={spec.vocab}"


def _save(fig, png: Path) -> None:
    """Lay the figure out, write it atomically, free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def plot_recall(records: list[dict], png: Path) -> None:
    """Accuracy against d_model, one line per variant, one panel per task: Zoology's Figure 2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best, colors = best_by_cell(records), row_colors(records)
    tasks = list(dict.fromkeys(r["task"] for r in records))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for name in dict.fromkeys(row(r) for r in records if r["task"] == task):
            widths = sorted(w for (t, n, w) in best if t == task and n == name)
            ax.plot(widths, [best[(task, name, w)] for w in widths], "o-", color=colors[name], label=label(name))
        ax.set(xscale="log", xlabel="d_model", ylabel="accuracy", ylim=(-0.02, 1.02), title=panel_title(task))
        ax.set_xticks(sorted({w for (t, _, w) in best if t == task}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.get_xaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, png)


def best_curves(records: list[dict]) -> dict[str, list[dict]]:
    """Per task, the record with a curve that has the best accuracy of each (row, d_model): the
    learning rate the table reports (the first seed's run where there are several)."""
    chosen: dict[tuple, dict] = {}
    for r in records:
        if r.get("curve"):
            key = (r["task"], row(r), r["d_model"])
            held = chosen.get(key)
            if held is None or (r["seed"], -r["accuracy"]) < (held["seed"], -held["accuracy"]):
                chosen[key] = r

    def shortest_first(item):  # then by width
        (task, _, width), r = item
        return r["seq_len"], r["kv_pairs"], task, width

    by_task: dict[str, list[dict]] = {}
    for (task, _, _), r in sorted(chosen.items(), key=shortest_first):
        by_task.setdefault(task, []).append(r)
    return by_task


def plot_recall_curves(records: list[dict], png: Path) -> None:
    """Test accuracy against training steps of each (variant, width)'s best cell, one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_task, colors = best_curves(records), row_colors(records)
    if not by_task:
        return
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, len(by_task), figsize=(4.5 * len(by_task), 3.6), squeeze=False)
    for ax, (task, chosen) in zip(axes[0], by_task.items()):
        widths = sorted({r["d_model"] for r in chosen})
        for r in chosen:
            curve = r["curve"]
            ax.plot([p["step"] for p in curve], [p["accuracy"] for p in curve], styles[widths.index(r["d_model"]) % 4],
                    color=colors[row(r)], label=f"{label(row(r))}, d={r['d_model']}, lr {r['lr']:g}")
        ax.set(xlabel="training step", ylabel="test accuracy", ylim=(-0.02, 1.02), title=panel_title(task))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    _save(fig, png)


def main(args) -> int:
    """The study from `quatrix ablate --task mqar:...` flags."""
    def numbers(text: str, kind, flag: str) -> list:
        try:
            return [kind(v) for v in text.split(",") if v]
        except ValueError:
            raise ValueError(f"{flag} must be comma-separated numbers, got {text!r}") from None

    for task in args.task:
        MQARSpec.parse(task)  # a bad spec fails before any training
    names = [n for n in args.variants.split(",") if n]
    for name in names:
        variant(name)
    rules = [r for r in args.rank_rule.split(",") if r]
    if not rules or set(rules) - set(RANK_RULES):
        raise ValueError(f"--rank-rule must be {' or '.join(RANK_RULES)} or both, comma-separated; got "
                         f"{args.rank_rule!r}")
    recipe = Recipe(layers=args.layers, no_mlp=args.no_mlp, heads=args.heads, epochs=args.epochs,
                    batch_size=args.batch_size, eval_every=args.eval_every)
    cells = [Cell(task, name, width, lr, seed, rule) for task in args.task for name in names
             for rule in (rules if VARIANTS[name].mixer != "mha" else ["quarter"])  # full attention has no rank
             for width in numbers(args.d_model, int, "--d-model") for lr in numbers(args.lrs, float, "--lrs")
             for seed in numbers(args.seeds, int, "--seeds")]
    cells = list(dict.fromkeys(cells))
    out = Path(args.out)
    records = run_study(cells, recipe, out, jobs=args.jobs)
    atomic_write_text(out / "results.md", results_markdown(records, recipe) + "\n")
    plot_recall(records, out / "recall.png")
    plot_recall_curves(records, out / "curves.png")
    print(f"results: {out / 'results.md'}, {out / RESULTS}, {out / 'recall.png'}, {out / 'curves.png'}")
    return 0
