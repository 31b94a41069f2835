"""Helpers every training stage shares: distributed set-up, thread pinning, the flags and
the training loop, optimizers, schedule, metrics and plots. Checkpoints and exact resume
live in quatrix.train.checkpoints (re-exported here, so a stage imports one module);
held-out evaluation lives in quatrix.eval."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from quatrix.io import atomic_path, atomic_write_json, atomic_write_text
from quatrix.precision import PRECISIONS, autocast_context, resolve_precision  # noqa: F401 (the stages' one import)
from quatrix.train.checkpoints import (  # noqa: F401 (the stages' one import)
    CHECKPOINT_DIR,
    MANIFEST_NAME,
    STATE_NAME,
    checkpoint_numerics,
    load_checkpoint_state,
    recover_checkpoint,
    restore,
    resume_precision,
    save_checkpoint,
    trainer_state,
    verify_checkpoint,
)

METRICS_NAME = "metrics.jsonl"
SUMMARY_NAME = "summary.json"  # written when a run finishes
RUN_CONFIG_NAME = "run_config.json"
LOSS_PLOT_NAME = "loss.png"


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


def pin_threads(threads: int | None = None) -> int:
    """Fix the CPU thread count for the whole run and stop MKL from changing it per call.

    Bitwise-reproducible CPU training needs every matmul and reduction split the same way:
    MKL and ATen sum in a thread-count-dependent order (1 thread against 2 moves this
    project's tiny run by one float32 ulp at step 17, then further), and with its default
    MKL_DYNAMIC=TRUE, MKL may choose fewer threads than asked on its own (see Intel's
    "Reproducibility Conditions"). So the count is set explicitly, recorded in every
    checkpoint, and a resumed run takes the count the run started with."""
    if threads and threads != torch.get_num_threads():
        print(f"using {threads} CPU threads, as the run did until now (not {torch.get_num_threads()}), so that it "
              f"continues bit for bit", file=sys.stderr)
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    _mkl_set_dynamic(False)
    return threads


def _mkl_set_dynamic(enabled: bool) -> None:
    """MKL's C entry point MKL_Set_Dynamic (by value; the lower-case `mkl_set_dynamic`
    symbol is the Fortran one, by reference) in the MKL inside torch's CPU library."""
    import ctypes

    library = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    try:
        ctypes.CDLL(str(library)).MKL_Set_Dynamic(ctypes.c_int(int(enabled)))
    except (OSError, AttributeError):  # another platform, or a build without MKL
        pass


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


# ---------------------------------------------------------------------- flags every stage shares
def add_run_arguments(p, *, steps: int, lr: float, warmup: int, eval_every: int, save_every: int, out: str,
                      batch_size: int | None = None, seq_len: int | None = None, weight_decay: float = 0.1,
                      batch_help: str = "sequences per step per process") -> None:
    """Optimisation, checkpoint, resume, device and precision flags, with each stage's
    defaults; the batch flags only where the stage has batches of a fixed shape (batch_size)."""
    from quatrix.validation import (float_in, int_at_least, nonnegative_float, nonnegative_int, positive_float,
                                    positive_int)

    p.add_argument("--steps", type=positive_int, default=steps, help="optimizer steps in all")
    if batch_size is not None:
        p.add_argument("--batch-size", type=positive_int, default=batch_size, help=f"{batch_help} (before accumulation)")
        p.add_argument("--grad-accum", type=positive_int, default=1, help="micro-batches per optimizer step")
    if seq_len is not None:
        p.add_argument("--seq-len", type=int_at_least(2), default=seq_len)
    p.add_argument("--lr", type=positive_float, default=lr)
    p.add_argument("--weight-decay", type=nonnegative_float, default=weight_decay)
    p.add_argument("--warmup", type=nonnegative_int, default=warmup, help="linear warmup steps (at most --steps)")
    p.add_argument("--final-lr", type=float_in(0.0, 1.0), default=0.1,
                   help="the learning rate the cosine decay ends at, as a fraction of --lr (1: constant after warmup)")
    p.add_argument("--optimizer", choices=["adamw", "muon"], default="adamw")
    p.add_argument("--eval-every", type=nonnegative_int, default=eval_every,
                   help="validate every N steps and at the end (0: only at the end)")
    p.add_argument("--save-every", type=nonnegative_int, default=save_every,
                   help="checkpoint every N steps and at the end (0: only at the end)")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--out", default=out)
    p.add_argument("--resume", action="store_true",
                   help="continue the run in OUT exactly, from its last checkpoint (from step 0 if it was killed "
                        "before its first checkpoint)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: bf16 autocast where the device has native bf16 (CUDA with bf16, a CPU with AMX or "
                        "AVX-512-BF16), else fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--grad-checkpointing", action="store_true")


def check_run_arguments(args) -> None:
    """What the flag types cannot see alone (they already refuse 0, negative and NaN values)."""
    if args.warmup > args.steps:
        raise ValueError(f"--warmup {args.warmup} is longer than the run (--steps {args.steps})")
    if args.resume and not Path(args.out).is_dir():
        raise FileNotFoundError(f"--resume: no run to continue at {args.out}")


def run_stage(args, run, *extra) -> int:
    """A stage's entry point: check the shared flags, join the process group, run
    `run(args, d, *extra)`, and leave the group on every way out."""
    check_run_arguments(args)
    d = setup_distributed(args.device)
    try:
        return run(args, d, *extra)
    finally:
        teardown_distributed(d)


def run_device(args, d: Dist) -> str:
    return f"cuda:{d.local_rank}" if args.device.startswith("cuda") and d.world_size > 1 else args.device


def resume_point(args, out: Path, d: Dist, stage: str) -> Path | None:
    """The checkpoint to continue from (after repairing a swap a kill interrupted), or None.

    A run killed before its first checkpoint restarts from step 0 under --resume: it is the
    same run, and the seed makes its first steps identical."""
    if not args.resume:
        return None
    if d.is_main:
        recover_checkpoint(out)
    d.barrier()
    checkpoint = out / CHECKPOINT_DIR
    if checkpoint.is_dir():
        return checkpoint
    if d.is_main:
        print(f"{stage}: --resume: {out} holds no checkpoint yet; starting from step 0", file=sys.stderr)
    return None


def prepare_run(args, d: Dist, out: Path, stage: str) -> tuple[str, Path | None]:
    """Device, resume point, precision and threads (a resumed run keeps its own), seeds.
    Returns (device, checkpoint to resume from or None)."""
    device = run_device(args, d)
    checkpoint = resume_point(args, out, d, stage)
    numerics = checkpoint_numerics(checkpoint)
    args.precision_resolved = resume_precision(args.precision, device, numerics.get("precision"))
    out.mkdir(parents=True, exist_ok=True)
    pin_threads(numerics.get("threads"))
    seed_everything(args.seed)
    return device, checkpoint


# ---------------------------------------------------------------------- set-up and steps
PLUGIN_SOURCES = {"vision": "image", "audio": "audio", "world": "world"}  # plugin -> the data source that feeds it


def freeze_unused_plugins(model: torch.nn.Module, sources) -> None:
    """Freeze the plugins no data source of this run feeds (a text-only run of a vision
    preset, the world model in language-model stages): they get no gradient, the optimizer
    skips them, and DistributedDataParallel does not wait for them."""
    for name, source in PLUGIN_SOURCES.items():
        module = getattr(model, name, None)
        if module is not None and source not in sources:
            module.requires_grad_(False)


def uneven_plugins(model: torch.nn.Module, sources) -> bool:
    """Whether some steps feed a trainable plugin and others do not (a text + image
    mixture): then DistributedDataParallel must look for parameters without gradients."""
    trainable = any(p.requires_grad for name in PLUGIN_SOURCES if getattr(model, name, None) is not None
                    for p in getattr(model, name).parameters())
    return trainable and len(sources) > 1


class MixtureObjective(torch.nn.Module):
    """A QuatrixLM as the training loop calls it, whatever the step's source: a world batch
    (frames, actions, next_frames, rewards) trains the world model, any other batch the
    language model (with its image or audio prefix). Keyword batch in, {"loss", ...} out."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, check_values: bool = False, **batch):
        if "frames" in batch:
            return self.model.world(batch["frames"], batch["actions"], batch["next_frames"], batch["rewards"],
                                    check_values=check_values)
        return self.model(**batch, check_values=check_values)


def wrap_model(model: torch.nn.Module, compile: bool, d: Dist, device: str, find_unused: bool = False):
    """torch.compile and DistributedDataParallel as asked. `find_unused` (see
    `uneven_plugins`) costs a graph traversal per step, so only when needed."""
    if compile:
        model = torch.compile(model)
    if d.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[d.local_rank] if "cuda" in device else None,
                                        find_unused_parameters=find_unused)
    return model


def accumulate_gradients(train_model, loader, step: int, grad_accum: int, d: Dist, device: str,
                         autocast) -> tuple[str, Tensor, int]:
    """Forward and backward over `grad_accum` micro-batches of this step's source; under DDP
    the gradients are all-reduced once, with the last micro-batch. Returns the source, the
    step's mean loss (a device tensor: no host sync here) and the tokens this process fed
    (the rows of the batch where it has no input_ids: the world model's transitions)."""
    loss_sum = torch.zeros((), device=device)
    tokens = 0
    for micro in range(grad_accum):
        source, batch = loader.next_batch(step)
        tokens += batch["input_ids"].numel() if "input_ids" in batch else len(next(iter(batch.values())))
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        defer_sync = d.world_size > 1 and micro < grad_accum - 1
        with train_model.no_sync() if defer_sync else contextlib.nullcontext():  # one context per micro-batch
            with autocast:
                loss = train_model(**batch, check_values=False)["loss"] / grad_accum
            loss.backward()
        loss_sum += loss.detach()
    return source, loss_sum, tokens


def train_loop(args, d: Dist, device: str, out: Path, model, train_model, tokenizer, optimizers, loader, metrics,
               start: int, *, stage: str, evaluate, extra=None) -> int:
    """Steps start+1 .. --steps: train, log, validate, checkpoint. `evaluate()` returns the
    validation record (every --eval-every steps and at the end); `extra()` more fields for
    every step's record. 0 when done, 1 when the loss went non-finite (the last good
    checkpoint is kept)."""
    from tqdm import tqdm

    autocast = autocast_context(device, args.precision_resolved)
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, disable=not d.is_main, desc=stage)
    last_saved = start
    for step in bar:
        t0 = time.perf_counter()
        lr = set_lr(optimizers, lr_factor(step, args.warmup, args.steps, args.final_lr))
        source, loss, tokens = accumulate_gradients(train_model, loader, step, args.grad_accum, d, device, autocast)
        loss_value, grad_norm = optimizer_step(model, optimizers, loss, d)
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
            bar.close()
            what = f"loss became {loss_value}" if not math.isfinite(loss_value) else f"gradient norm became {grad_norm}"
            print(f"{stage}: {what} at step {step + 1}; stopping without that update. The last good checkpoint "
                  f"(step {last_saved}) is in {out / CHECKPOINT_DIR}; lower --lr or check the data.", file=sys.stderr)
            return 1
        done = step + 1
        record = {"step": done, "loss": loss_value, "source": source, "lr": lr, "grad_norm": grad_norm,
                  "tokens": tokens * d.world_size, "tokens_per_s": tokens * d.world_size / (time.perf_counter() - t0),
                  **(extra() if extra else {})}
        if len(getattr(loader, "names", ())) > 1:  # a mixture: each source's loss on its own line
            record[f"{source}_loss"] = loss_value
        if due(done, args.eval_every, args.steps):
            record.update(evaluate())
        if d.is_main:
            metrics.log(record)
            bar.set_postfix(loss=f"{loss_value:.3f}", **({"val": f"{record['val_loss']:.3f}"} if "val_loss" in record else {}))
        if args.stop_after is not None and done >= args.stop_after:
            return 0  # as if killed: no checkpoint for this step
        if due(done, args.save_every, args.steps):
            if d.is_main:
                save_checkpoint(out, model, tokenizer, optimizers, done, loader.state_dict(), vars(args))
            last_saved = done
            d.barrier()
    return 0


def optimizer_step(model: torch.nn.Module, optimizers, loss: Tensor, d: Dist) -> tuple[float, float]:
    """Clip the gradient norm at 1.0 and step, unless the loss or the gradients are not
    finite. Returns (mean loss over ranks, gradient norm): the step's one host sync."""
    grad_norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], 1.0)
    loss_value, norm_value = torch.stack([d.mean(loss.float()), grad_norm.float().to(loss.device)]).tolist()
    if math.isfinite(loss_value) and math.isfinite(norm_value):
        for opt in optimizers:
            opt.step()
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    return loss_value, norm_value


def command_line(command: str, options: dict[str, Any]) -> list[str]:
    """`quatrix COMMAND` as an argv for a subprocess, from typed options: a field name
    becomes its flag (`q_heads` -> `--q-heads`), True a bare switch, a list a repeated
    flag; None and False are left out."""
    argv = [sys.executable, "-m", "quatrix.cli", command]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            argv += [a for v in value for a in (flag, str(v))]
        else:
            argv += [flag, str(value)]
    return argv


def due(step: int, every: int, total: int) -> bool:
    """Periodic work (evaluation, checkpoints) at every `every` steps and at the end; 0 = only at the end."""
    return step == total or (every > 0 and step % every == 0)


def write_run_config(out: Path, args, config, tokenizer, d: Dist) -> None:
    resolved = {"args": vars(args), "model": config.to_dict(), "world_size": d.world_size,
                "tokenizer": {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size},
                "torch": torch.__version__, "threads": torch.get_num_threads(),
                "precision": getattr(args, "precision_resolved", None)}
    atomic_write_json(out / RUN_CONFIG_NAME, resolved)


# ---------------------------------------------------------------------- metrics
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


def write_summary(out: Path, metrics_path: Path, device: str) -> dict[str, Any]:
    """OUT/summary.json: final losses, tokens fed, median training throughput and peak memory of the run."""
    import statistics

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
    plot_metrics(metrics_path, png, lines=lines, points={"val_loss": "validation (text)"}, ylabel="loss")


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
