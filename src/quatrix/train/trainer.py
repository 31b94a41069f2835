"""The Trainer: one owner for every training stage's set-up, resume, loop, metrics and
teardown. A stage subclasses it and supplies only what differs:

    setup()        the model, tokenizer and data (self.model, self.tokenizer, self.loader)
    evaluate()     the validation record, {"val_loss": ...} (every --eval-every steps, at the end)
    report()       plots, summary and the end-of-stage line, once the run has finished
    train_step()   one optimizer step's record; the default feeds --grad-accum micro-batches
                   of `self.loader` through `objective()`. GRPO overrides it, not the loop.

    class PretrainTrainer(Trainer): ...
    status = PretrainTrainer(config).run()      # 0 done, 1 non-finite loss

Order of one run (kept fixed: the RNG streams a resumed run restores depend on it):
process group -> resume point, precision, threads, seed -> setup() -> run_config.json ->
optimizers -> restore -> torch.compile / DDP -> the loop -> report() -> leave the group.
Validation runs in eval mode, without gradients, under the same autocast as training.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from quatrix.io import atomic_write_json
from quatrix.media import MODALITIES
from quatrix.precision import autocast_context
from quatrix.pretrained import has_tokenizer, load_model_and_tokenizer
from quatrix.train import distributed
from quatrix.train.metrics import (LOSS_PLOT_NAME, METRICS_NAME, RUN_CONFIG_NAME, Metrics, plot_losses, read_metrics,
                                   source_losses, write_summary)
from quatrix.train.optim import build_optimizers, lr_factor, optimizer_step, set_lr
from quatrix.train.options import RunConfig
from quatrix.progress import Progress
from quatrix.train.resume import CHECKPOINT_DIR, checkpoint_numerics, restore, resume_point, resume_precision, \
    save_checkpoint

# plugin (a QuatrixLM attribute) -> the data source that feeds it
PLUGIN_SOURCES = {**{m.encoder: m.name for m in MODALITIES.values()}, "world": "world"}


class Trainer:
    """A training stage's run. Subclasses set `stage` and implement `setup`, and usually
    `evaluate` and `report`; see the module docstring."""

    stage = "train"

    def __init__(self, config: RunConfig):
        self.config = config
        self.out = Path(config.out)
        self.d = distributed.Dist()
        self.device = config.device
        self.model: torch.nn.Module | None = None
        self.tokenizer = None
        self.loader = None  # next_batch(step) -> (source, batch); state_dict / load_state_dict
        self.sources: set[str] = {"text"}  # the data sources of the run: plugins nobody feeds are frozen
        self.optimizers: list[torch.optim.Optimizer] = []
        self.train_model = None
        self.metrics: Metrics | None = None

    # ------------------------------------------------------------------ hooks
    def setup(self) -> None:
        raise NotImplementedError

    def objective(self) -> torch.nn.Module:
        """What the loop calls with a batch's keywords ({"loss", ...} out); wrapped for DDP."""
        return self.model

    def evaluate(self) -> dict[str, Any]:
        return {}

    def step_extra(self) -> dict[str, Any]:
        """More fields for every step's record."""
        return {}

    def report(self) -> None:
        plot_losses(self.metrics_path, self.out / LOSS_PLOT_NAME)
        write_summary(self.out, self.metrics_path, self.device)

    def find_unused_parameters(self) -> bool:
        """Whether some steps feed a trainable plugin and others do not (a text + image
        mixture): then DistributedDataParallel must look for parameters without gradients."""
        trainable = any(p.requires_grad for name in PLUGIN_SOURCES if getattr(self.model, name, None) is not None
                        for p in getattr(self.model, name).parameters())
        return trainable and len(self.sources) > 1

    # ------------------------------------------------------------------ the run
    def run(self) -> int:
        """Check the options, join the process group, train, and leave the group on every way out."""
        self.config.check()
        self.d = distributed.setup_distributed(self.config.device)
        try:
            return self._run()
        finally:
            distributed.teardown_distributed(self.d)

    @property
    def is_main(self) -> bool:
        return self.d.is_main

    @property
    def metrics_path(self) -> Path:
        return self.out / METRICS_NAME

    def log(self, *parts, **kwargs) -> None:
        if self.is_main:
            print(*parts, **kwargs)

    def autocast(self):
        return autocast_context(self.device, self.config.compute_precision)

    def _run(self) -> int:
        config = self.config
        checkpoint = self._prepare()
        self.setup()
        freeze_unused_plugins(self.model, self.sources)
        if self.is_main:
            self.write_run_config()
        self.optimizers = build_optimizers(self.model, config.optimizer, config.lr, config.weight_decay)
        start = restore(checkpoint, self.model, self.optimizers, self.loader, self.model.config) if checkpoint else 0
        self.train_model = distributed.wrap_model(self.objective(), config.compile, self.d, self.device,
                                                  find_unused=self.find_unused_parameters())
        self.metrics = Metrics(self.out, resume_step=start if config.resume else None) if self.is_main else None
        status = self.loop(start)
        if self.is_main:
            self.metrics.close()
            if status == 0 and config.stop_after is None:
                self.report()
        return status

    def _prepare(self) -> Path | None:
        """Device, resume point, precision and threads (a resumed run keeps its own), seeds,
        the output folder. Returns the checkpoint to resume from, or None."""
        config = self.config
        self.device = distributed.run_device(config.device, self.d)
        checkpoint = resume_point(self.out, self.d, self.stage) if config.resume else None
        numerics = checkpoint_numerics(checkpoint)
        config.compute_precision = resume_precision(config.precision, self.device, numerics.get("precision"))
        self.out.mkdir(parents=True, exist_ok=True)
        distributed.pin_threads(numerics.get("threads"))
        distributed.seed_everything(config.seed)
        return checkpoint

    def write_run_config(self) -> None:
        """OUT/run_config.json: every option as resolved, the model, the tokenizer, the numerics."""
        resolved = {"args": self.config.to_dict(), "model": self.model.config.to_dict(),
                    "world_size": self.d.world_size,
                    "tokenizer": {"kind": self.tokenizer.kind, "vocab_size": self.tokenizer.vocab_size},
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "precision": self.config.compute_precision}
        atomic_write_json(self.out / RUN_CONFIG_NAME, resolved)

    def loop(self, start: int) -> int:
        """Steps start+1 .. --steps: train, log, validate, checkpoint. 0 when done, 1 when the
        loss or the gradients went non-finite (the last good checkpoint is kept)."""
        config = self.config
        progress = Progress(self.stage, start, config.steps, enabled=self.is_main, mode=config.progress_mode())
        last_saved = start
        for step in range(start, config.steps):
            lr = set_lr(self.optimizers, lr_factor(step, config.warmup, config.steps, config.final_lr))
            record = self.train_step(step)
            if "problem" in record:
                progress.close()
                print(f"{self.stage}: {record['problem']} at step {step + 1}; stopping without that update. The last "
                      f"good checkpoint (step {last_saved}) is in {self.out / CHECKPOINT_DIR}; lower --lr or check "
                      f"the data.", file=sys.stderr)
                return 1
            done = step + 1
            record = {"step": done, **record, "lr": lr, **self.step_extra()}
            if due(done, config.eval_every, config.steps):
                record.update(self.validate())
            if self.is_main:
                self.metrics.log(record)
                progress.update(done, record)
            if config.stop_after is not None and done >= config.stop_after:
                progress.close()
                return 0  # as if killed: no checkpoint for this step
            if due(done, config.save_every, config.steps):
                if self.is_main:
                    save_checkpoint(self.out, self.model, self.tokenizer, self.optimizers, done,
                                    self.loader.state_dict(), config.to_dict())
                last_saved = done
                self.d.barrier()
        progress.close()
        return 0

    def validate(self) -> dict[str, Any]:
        """`evaluate()` in eval mode, without gradients, under the run's autocast."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), self.autocast():
                return self.evaluate()
        finally:
            self.model.train(was_training)

    def train_step(self, step: int) -> dict[str, Any]:
        """Forward and backward over --grad-accum micro-batches of this step's source, then
        the optimizer step. Its record, or {"problem": ...} when the loss or the gradient
        norm is not finite (no update was made)."""
        t0 = time.perf_counter()
        source, loss, tokens = accumulate_gradients(self.train_model, self.loader, step, self.config.grad_accum,
                                                    self.d, self.device, self.autocast())
        loss_value, grad_norm = optimizer_step(self.model, self.optimizers, loss, self.d)
        if not math.isfinite(loss_value):
            return {"problem": f"loss became {loss_value}"}
        if not math.isfinite(grad_norm):
            return {"problem": f"gradient norm became {grad_norm}"}
        world = self.d.world_size
        record = {"loss": loss_value, "source": source, "grad_norm": grad_norm, "tokens": tokens * world,
                  "tokens_per_s": tokens * world / (time.perf_counter() - t0)}
        if len(getattr(self.loader, "names", ())) > 1:  # a mixture: each source's loss on its own line
            record[f"{source}_loss"] = loss_value
        return record

    def summary_line(self) -> str:
        """The end-of-stage line: the training loss as the report shows it (the mean over the
        last 5% of steps, per source in a mixture: one step's loss is one batch's, of one
        source) and the last validation record."""
        records = read_metrics(self.metrics_path)
        losses = source_losses(records)
        train = ", ".join(f"{s} {v:.3f}" if s else f"{v:.3f}" for s, v in losses.items())
        line = f"{self.stage}: {self.config.steps} steps, training loss {train} (last 5% of steps"
        line += ", per source)" if len(losses) > 1 else ")"
        val = [r for r in records if "val_loss" in r]
        if val:
            line += f", validation loss {val[-1]['val_loss']:.3f}"
            if "val_perplexity" in val[-1]:
                line += f" (perplexity {val[-1]['val_perplexity']:.1f})"
        text = [r for r in records if "val_text_loss" in r]
        if text:
            line += f", held-out plain-text loss {text[-1]['val_text_loss']:.3f}"
        return line + f"; checkpoint {self.out / CHECKPOINT_DIR}"


def due(step: int, every: int, total: int) -> bool:
    """Periodic work (evaluation, checkpoints) at every `every` steps and at the end; 0 = only at the end."""
    return step == total or (every > 0 and step % every == 0)


def freeze_unused_plugins(model: torch.nn.Module, sources) -> None:
    """Freeze the plugins no data source of this run feeds (a text-only run of a vision
    preset, the world model in language-model stages): they get no gradient, the optimizer
    skips them, and DistributedDataParallel does not wait for them."""
    for name, source in PLUGIN_SOURCES.items():
        module = getattr(model, name, None)
        if module is not None and source not in sources:
            module.requires_grad_(False)


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


def accumulate_gradients(train_model, loader, step: int, grad_accum: int, d: distributed.Dist, device: str,
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


def load_init(path: str, device: str):
    """The starting model and its tokenizer, checked against each other."""
    if not has_tokenizer(path):
        raise FileNotFoundError(f"--init {path}: no tokenizer saved beside the model (use a training run's checkpoint)")
    return load_model_and_tokenizer(path, map_location=device)  # refuses a tokenizer of another vocabulary
