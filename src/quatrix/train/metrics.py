"""A run's records: OUT/metrics.jsonl (one JSON object per step), TensorBoard scalars where
installed, summary.json at the end, and the loss plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from quatrix.io import atomic_path, atomic_write_json, atomic_write_text

METRICS_NAME = "metrics.jsonl"
SUMMARY_NAME = "summary.json"  # written when a run finishes
RUN_CONFIG_NAME = "run_config.json"
LOSS_PLOT_NAME = "loss.png"


class Metrics:
    """Appends one JSON object per line to OUT/metrics.jsonl (and TensorBoard scalars when
    the `tensorboard` package is installed)."""

    def __init__(self, out: Path, resume_step: int | None = None):
        self.path = out / METRICS_NAME
        if resume_step is not None and self.path.is_file():  # drop what the killed run logged after its checkpoint
            kept = [r for r in _records(self.path) if r["step"] <= resume_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        elif resume_step is None:
            self.path.unlink(missing_ok=True)
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"))
        except ImportError:
            pass

    def log(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return _records(path)


def _records(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics file; a last line cut short by a kill is dropped."""
    records = []
    lines = Path(path).read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number}: not a JSON metrics record") from None
    return records


def window(n: int) -> int:
    """Steps averaged at each end of a run: 5% of them, at least one (one step is noise)."""
    return max(1, n // 20)


def smoothed(records: list[dict[str, Any]], key: str) -> tuple[float, float]:
    """Mean of `key` over the first and over the last 5% of the records that have it."""
    import statistics

    values = [r[key] for r in records if key in r]
    k = window(len(values))
    return statistics.fmean(values[:k]), statistics.fmean(values[-k:])


def source_losses(records: list[dict[str, Any]]) -> dict[str, float]:
    """Each source's training loss at the end of a run (`smoothed`, over that source's own
    steps); a run of one source gives {"": loss}. What the end-of-stage line and the report show."""
    sources = sorted({r["source"] for r in records if f"{r.get('source')}_loss" in r})
    if not sources:
        return {"": smoothed(records, "loss")[1]}
    return {s: smoothed(records, f"{s}_loss")[1] for s in sources}


def write_summary(out: Path, metrics_path: Path, device: str) -> dict[str, Any]:
    """OUT/summary.json: final losses, tokens fed, median training throughput and peak memory of the run."""
    import statistics

    records = read_metrics(metrics_path)
    val = [r for r in records if "val_loss" in r]
    val_text = [r for r in records if "val_text_loss" in r]
    if str(device).startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        with open("/proc/self/status") as f:  # Linux: the resident-set high-water mark
            peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    summary = {
        "steps": records[-1]["step"], "loss": records[-1]["loss"],
        "val_loss": val[-1]["val_loss"] if val else None,
        **({"val_text_loss": val_text[-1]["val_text_loss"]} if val_text else {}),
        "tokens": sum(r.get("tokens", 0) for r in records),
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in records),
        "peak_memory_mib": peak,
    }
    atomic_write_json(out / SUMMARY_NAME, summary)
    return summary


def plot_losses(metrics_path: Path, png: Path) -> None:
    """Training and validation loss against step; a mixture's loss per source."""
    records = read_metrics(metrics_path)
    sources = sorted({r["source"] for r in records if f"{r.get('source')}_loss" in r})
    lines = {f"{s}_loss": f"train: {s}" for s in sources} if sources else {"loss": "train"}
    points = {"val_loss": "validation", "val_text_loss": "validation (plain text)"}
    plot_metrics(metrics_path, png, lines=lines, points=points, ylabel="loss")


def plot_metrics(metrics_path: Path, png: Path, lines: dict[str, str], points: dict[str, str], ylabel: str = "",
                 title: str | None = None) -> None:
    """Per-step metrics as lines and occasional ones (evaluations) as points, against step,
    written atomically as a PNG. `lines` and `points` map a metrics key to its label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in lines.items():
        logged = [r for r in records if key in r]
        ax.plot([r["step"] for r in logged], [r[key] for r in logged], label=label, lw=1)
    for key, label in points.items():
        logged = [r for r in records if key in r]
        if logged:
            ax.plot([r["step"] for r in logged], [r[key] for r in logged], "o-", label=label)
    ax.set(xlabel="step", ylabel=ylabel, title=title or metrics_path.parent.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
