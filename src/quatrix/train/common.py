"""Helpers every training stage shares: distributed set-up, optimizers, schedule,
checkpoints with exact resume, metrics, plots and held-out evaluation."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

CHECKPOINT_DIR = "checkpoint"
STATE_NAME = "trainer_state.pt"


# ---------------------------------------------------------------------- distributed
@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
            value = value / self.world_size
        return value


def setup_distributed(device: str) -> Dist:
    """Join the process group torchrun describes in the environment (gloo on CPU, NCCL on CUDA)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Dist()
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend=backend)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
    return Dist(dist.get_rank(), world_size, local_rank)


def teardown_distributed(d: Dist) -> None:
    if d.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------- optimizers
def build_optimizers(model: torch.nn.Module, name: str, lr: float, weight_decay: float) -> list[torch.optim.Optimizer]:
    """AdamW for everything; or, as the Quatrix paper trains, Muon (torch.optim.Muon) for the
    2-D weight matrices inside blocks and AdamW for embeddings, norms, biases and the rest.

    Weight decay applies to 2-D matrices only (not to embeddings, norms or biases)."""
    if name not in ("adamw", "muon"):
        raise ValueError(f"unknown optimizer {name!r}; choose adamw or muon")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    hidden = {n for n, p in params.items() if p.dim() == 2 and ".blocks." in f".{n}" and "emb" not in n}
    decay = {n for n, p in params.items() if p.dim() >= 2 and "emb" not in n}
    optimizers = []
    if name == "muon":
        optimizers.append(torch.optim.Muon([params[n] for n in sorted(hidden)], lr=lr, weight_decay=weight_decay,
                                           adjust_lr_fn="match_rms_adamw"))
        params = {n: p for n, p in params.items() if n not in hidden}
    groups = [
        {"params": [p for n, p in params.items() if n in decay], "weight_decay": weight_decay},
        {"params": [p for n, p in params.items() if n not in decay], "weight_decay": 0.0},
    ]
    optimizers.append(torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.95)))
    for opt in optimizers:
        for group in opt.param_groups:
            group["base_lr"] = lr
    return optimizers


def lr_factor(step: int, warmup: int, total: int, final: float = 0.1) -> float:
    """Linear warmup over `warmup` steps, then cosine decay to `final` of the peak at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(optimizers: list[torch.optim.Optimizer], factor: float) -> float:
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * factor
    return optimizers[-1].param_groups[0]["lr"]


# ---------------------------------------------------------------------- checkpoints
def save_checkpoint(out: Path, model, tokenizer, optimizers, step: int, loader_state: dict, args: dict) -> Path:
    """OUT/checkpoint/: model.safetensors + config.json + tokenizer + trainer_state.pt
    (optimizers, step, loader position, RNG states, arguments), swapped in whole: written to
    a temporary folder, then renamed over the previous checkpoint."""
    final = out / CHECKPOINT_DIR
    tmp, old = out / f".{CHECKPOINT_DIR}.tmp", out / f".{CHECKPOINT_DIR}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tokenizer.save(tmp)
    state = {
        "step": step,
        "optimizers": [opt.state_dict() for opt in optimizers],
        "loader": loader_state,
        "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
        "args": args,
    }
    torch.save(state, tmp / STATE_NAME)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint_state(directory: Path) -> dict[str, Any]:
    path = directory / STATE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no training checkpoint to resume from: {path} is missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file
        raise ValueError(f"{path} is corrupt: {e}") from None


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


# ---------------------------------------------------------------------- metrics
class Metrics:
    """Appends one JSON object per line to OUT/metrics.jsonl (and TensorBoard scalars when
    the `tensorboard` package is installed)."""

    def __init__(self, out: Path, resume_step: int | None = None):
        self.path = out / "metrics.jsonl"
        if resume_step is not None and self.path.is_file():  # drop what the killed run logged after its checkpoint
            kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
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
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_summary(out: Path, metrics_path: Path, device: str) -> dict[str, Any]:
    """OUT/summary.json: final losses, median training throughput and peak memory of the run."""
    import statistics

    from quatrix.checkpoint import atomic_write_text

    records = read_metrics(metrics_path)
    val = [r for r in records if "val_loss" in r]
    if str(device).startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        with open("/proc/self/status") as f:  # Linux: the resident-set high-water mark
            peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    summary = {
        "steps": records[-1]["step"], "loss": records[-1]["loss"],
        "val_loss": val[-1]["val_loss"] if val else None,
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in records),
        "peak_memory_mib": peak,
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def plot_losses(metrics_path: Path, png: Path) -> None:
    """Training and validation loss against step, written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from quatrix.checkpoint import atomic_path

    records = read_metrics(metrics_path)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in records], [r["loss"] for r in records], label="train", lw=1)
    val = [r for r in records if "val_loss" in r]
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation")
    ax.set(xlabel="step", ylabel="loss (nats/token)", title=metrics_path.parent.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_tokens(model, tokens: np.ndarray, seq_len: int, batch_size: int, tokenizer=None,
                    max_batches: int | None = None, device="cpu") -> dict[str, float]:
    """Mean next-token loss over consecutive windows of a token file, its perplexity and,
    with a tokenizer, bits per byte of the text those windows cover (comparable across
    tokenizers)."""
    was_training = model.training
    model.eval()
    n_windows = len(tokens) // seq_len
    if n_windows == 0:
        raise ValueError(f"evaluation data has {len(tokens)} tokens, fewer than one window of {seq_len}")
    n_batches = math.ceil(n_windows / batch_size)
    if max_batches:
        n_batches = min(n_batches, max_batches)
    total_loss, total_tokens, total_bytes = 0.0, 0, 0
    for b in range(n_batches):
        rows = np.stack([tokens[w * seq_len : (w + 1) * seq_len]
                         for w in range(b * batch_size, min((b + 1) * batch_size, n_windows))])
        ids = torch.from_numpy(rows.astype(np.int64)).to(device)
        losses = model(ids, labels=ids, loss_reduction="none")["loss"]  # [B, L-1]
        total_loss += float(losses.double().sum())
        total_tokens += losses.numel()
        if tokenizer is not None:  # bytes of the predicted tokens (positions 1..L-1 of each window)
            total_bytes += sum(len(tokenizer.decode(row[1:].tolist()).encode("utf-8")) for row in rows)
    model.train(was_training)
    loss = total_loss / total_tokens
    result = {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": total_tokens}
    if tokenizer is not None:
        result["bits_per_byte"] = total_loss / math.log(2) / max(1, total_bytes)
    return result
