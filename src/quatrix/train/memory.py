"""`quatrix memory`: the peak memory of one training step, predicted from the step itself.

The prediction runs one real optimizer step — the same model, loss, optimizer and
precision the stage would run — on fake tensors (`FakeTensorMode`: shapes and dtypes, no
data, no arithmetic), under `LiveBytes`, a dispatch mode that counts every storage from its
creation to its release. A hand formula drifts from the code the first time a layer
changes; counting the allocations of the code itself cannot. `--measure` runs the same
step on real tensors (on a GPU, also `torch.cuda.max_memory_allocated`).

Why our own `TorchDispatchMode` and not `torch.distributed._tools.mem_tracker.MemTracker`:
MemTracker is a private API that has changed between releases, and it attributes memory
to modules; the loss here is not a module (it is computed chunk by chunk from the hidden
states), and the parts a user sizes a GPU by — parameters, gradients, optimizer state,
activations, logits/loss — are categories of storages, which a 100-line mode counts
directly. See docs/design.md §4, "Memory planning".
"""

from __future__ import annotations

import contextlib
import math
import weakref
from dataclasses import dataclass, replace
from unittest import mock

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import quatrix.loss as loss_module
import quatrix.qcompass as qcompass
from quatrix.config import QuatrixConfig, preset
from quatrix.model import QuatrixLM
from quatrix.precision import autocast_context, resolve_precision
from quatrix.train.optim import build_optimizers

# CUDA context, cuBLAS/cuDNN workspaces and the caching allocator's rounding: not tensors,
# so not counted; a stated allowance. 512 MiB is above the context of recent NVIDIA GPUs
# under PyTorch (about 300-500 MiB, as `nvidia-smi` shows for a process that has only
# initialised CUDA) plus cuBLAS's default workspace; on a CPU there is none.
CUDA_ALLOWANCE = 512 * 2**20
PARTS = ("parameters", "gradients", "optimizer", "activations", "logits_loss", "allowance")


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of every live storage an op creates, and the peak of their sum.

    Storages are keyed by their C++ address and released through a weak reference, so a
    view never counts twice and a freed tensor stops counting at once. Each storage is
    tagged with the region it was made in ("activations" or "logits_loss"); at every new
    peak the live storages are split into parameters, gradients, optimizer state and the
    two regions."""

    def __init__(self, model: torch.nn.Module, optimizers=()):
        super().__init__()
        self.model, self.optimizers = model, list(optimizers)
        self.live: dict[int, tuple[int, str]] = {}
        self.now = self.peak = 0
        self.parts = dict.fromkeys(PARTS, 0)
        self.region = "activations"
        for p in model.parameters():
            self.add(p, "parameters")

    def add(self, tensor: torch.Tensor, region: str) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self.live:
            return
        size = storage.nbytes()
        self.live[key] = (size, region)
        self.now += size
        weakref.finalize(storage, self.release, key)
        if self.now > self.peak:
            self.peak = self.now
            self.snapshot()

    def release(self, key: int) -> None:
        size, _ = self.live.pop(key, (0, None))
        self.now -= size

    def snapshot(self) -> None:
        kinds = {}
        for p in self.model.parameters():
            if p.grad is not None:
                kinds[p.grad.untyped_storage()._cdata] = "gradients"
        for opt in self.optimizers:
            for state in opt.state.values():
                for value in state.values():
                    if isinstance(value, torch.Tensor):
                        kinds[value.untyped_storage()._cdata] = "optimizer"
        parts = dict.fromkeys(PARTS, 0)
        for key, (size, region) in self.live.items():
            parts[kinds.get(key, region)] += size
        self.parts = parts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.add(t, self.region)
        return out


@dataclass
class StepPlan:
    """What one training step is: the shapes the planner runs."""
    config: QuatrixConfig
    batch_size: int
    seq_len: int
    grad_accum: int = 1
    precision: str = "fp32"
    optimizer: str = "adamw"
    image_data: bool = False
    stage: str = "pretrain"
    device: str = "cuda"
    reference_model: bool = False  # GRPO with beta > 0 keeps a frozen copy
    temperature: float | None = None  # GRPO's log-probabilities
    chunked_loss: bool = True  # False: the plain loss over whole [B, L, V] logits, for comparison


def loss_region(model: torch.nn.Module, tracker: LiveBytes):
    """Tag what the head and loss make as "logits_loss": from the final norm's output in
    forward until the backward pass reaches the final norm again."""
    def enter(*_):
        tracker.region = "logits_loss"

    def leave(*_):
        tracker.region = "activations"

    return [model.norm.register_forward_hook(enter), model.register_forward_hook(leave),
            model.norm.register_full_backward_pre_hook(leave)]


def example_batch(plan: StepPlan, device: str) -> dict:
    """One micro-batch of the step's shapes (token 1 everywhere: values do not change memory)."""
    cfg = plan.config
    B, L = plan.batch_size, plan.seq_len
    ids = torch.ones(B, L, dtype=torch.long, device=device)
    batch = {"input_ids": ids, "labels": ids.clone()}
    if plan.image_data:
        size = cfg.image_size
        batch["pixel_values"] = torch.zeros(B, cfg.image_channels, size, size, device=device)
    if plan.temperature is not None:
        batch.update(loss_reduction="none", temperature=plan.temperature)
    return batch


def run_steps(plan: StepPlan, model, optimizers, tracker: LiveBytes, device: str) -> None:
    """One optimizer step of `grad_accum` micro-batches, in the steady state: the optimizer
    state is made first (an update with zero gradients), as every step after a run's first has it."""
    params = [p for p in model.parameters() if p.requires_grad]
    tracker.region = "optimizer"
    for p in params:
        p.grad = torch.zeros_like(p)
    for opt in optimizers:
        opt.step()
        opt.zero_grad(set_to_none=True)
    tracker.region, tracker.peak = "activations", 0  # count from here: the next allocation snapshots
    for _ in range(plan.grad_accum):
        batch = example_batch(plan, device)
        with autocast_context(device, plan.precision):
            loss = model(**batch, check_values=False)["loss"]
        tracker.region = "logits_loss"
        (loss.mean() / plan.grad_accum).backward()
        tracker.region = "activations"
        del batch, loss
    tracker.region = "optimizer"  # clipping's and the update's temporaries
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    for opt in optimizers:
        opt.step()
        opt.zero_grad(set_to_none=True)
    tracker.region = "activations"


class _EfficientAttention(torch.autograd.Function):
    """What CUDA's memory-efficient SDPA kernel allocates: the output and a per-query fp32
    log-sum-exp in forward, the input gradients in backward; never [L, L]. Run on fake
    tensors only, where the real kernel cannot (its dispatch needs a GPU)."""

    @staticmethod
    def forward(ctx, q, k, v, causal):
        out, lse, seed, offset = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, causal)
        ctx.save_for_backward(q, k, v, out, lse, seed, offset)
        ctx.causal = causal
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out, lse, seed, offset = ctx.saved_tensors
        dq, dk, dv, _ = torch.ops.aten._scaled_dot_product_efficient_attention_backward(
            grad.contiguous(), q, k, v, None, out, lse, seed, offset, 0.0, [True, True, True, False], ctx.causal)
        return dq, dk, dv, None


def _cuda_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None):
    kind = q.device.type
    if torch.is_autocast_enabled(kind):
        dtype = torch.get_autocast_dtype(kind)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if attn_mask is not None:  # the planner's batches are unpadded; a mask costs [B, 1, L, L] bools
        is_causal = True
    with torch.autocast(kind, enabled=False):
        return _EfficientAttention.apply(q, k, v, is_causal)


@contextlib.contextmanager
def cuda_kernels():
    """Route every mixer through SDPA's memory-efficient kernel, as it runs on a GPU
    (quatrix.qcompass picks SDPA on every non-CPU device), while the tensors are fake CPU ones."""
    with mock.patch.object(qcompass, "_pick_impl", lambda *a: "sdpa"), \
            mock.patch.object(qcompass.F, "scaled_dot_product_attention", _cuda_sdpa):
        yield


def build(plan: StepPlan, device: str):
    """The model (with a frozen reference copy for GRPO with beta > 0) and its optimizers."""
    with torch.device(device):  # made in place: moving fake tensors would swap them
        model = QuatrixLM(plan.config)
        reference = QuatrixLM(plan.config).requires_grad_(False) if plan.reference_model else None
    optimizers = build_optimizers(model, plan.optimizer, 1e-4, 0.1)
    if plan.device == "cuda":  # torch.optim's default on CUDA: multi-tensor updates with temporaries
        for opt in optimizers:
            for group in opt.param_groups:
                if "foreach" in group:
                    group["foreach"] = True
    return model, optimizers, reference


def predict(plan: StepPlan) -> dict:
    """The peak of one steady-state training step, counted on fake tensors."""
    with FakeTensorMode(), (cuda_kernels() if plan.device == "cuda" else contextlib.nullcontext()):
        return _count(plan, "cpu")


def measure(plan: StepPlan) -> dict:
    """The same step on real tensors on the current device: the counted peak, and on a GPU
    also torch.cuda.max_memory_allocated (which includes the allocator's rounding)."""
    device = "cuda" if plan.device == "cuda" else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--measure --device cuda needs a GPU; this machine has none (use --device cpu)")
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    result = _count(plan, device)
    if device == "cuda":
        result["cuda_max_allocated"] = torch.cuda.max_memory_allocated()
    return result


def _count(plan: StepPlan, device: str) -> dict:
    torch.manual_seed(0)
    model, optimizers, reference = build(plan, device)
    plain = mock.patch.object(loss_module, "CHUNK_BYTES", 2**62) if not plan.chunked_loss else contextlib.nullcontext()
    with plain, LiveBytes(model, optimizers) as tracker:
        if reference is not None:
            for p in reference.parameters():
                tracker.add(p, "parameters")
        hooks = loss_region(model, tracker)
        try:
            run_steps(plan, model, optimizers, tracker, device)
        finally:
            for hook in hooks:
                hook.remove()
    parts = dict(tracker.parts)
    parts["allowance"] = CUDA_ALLOWANCE if plan.device == "cuda" else 0
    return {"peak_bytes": tracker.peak + parts["allowance"], "parts": parts}


SECANT_STEPS = 8  # then bisection: max_batch_size's bound on its predictions


def max_batch_size(plan: StepPlan, budget: int, limit: int = 4096) -> int:
    """The largest micro-batch whose predicted peak fits `budget` bytes (0 if none does).

    Past the first few samples the peak grows linearly with the micro-batch, so a secant
    step through the two newest predictions lands on the edge or beside it. `low` (fits) and
    `high` (does not) bracket the edge and every guess falls strictly inside, so the bracket
    shrinks each time; where the peak does not grow the guess doubles instead. (It dips where
    the loss turns chunked: while a micro-batch's positions fit one chunk the plain loss
    holds all their logits, about three buffers of them, and a chunked one only a chunk's.)
    After SECANT_STEPS guesses the bracket is bisected, which bounds the count whatever the
    curve. Each prediction is a whole step on fake tensors (seconds on a CPU): for `tiny`
    this takes about half the predictions galloping did."""
    peaks: dict[int, int] = {}

    def peak(b: int) -> int:
        if b not in peaks:
            peaks[b] = predict(with_changes(plan, batch_size=b))["peak_bytes"]
        return peaks[b]

    if peak(1) > budget:
        return 0
    low, high, tried = 1, limit + 1, [1]
    while high - low > 1:
        if len(tried) == 1:
            x = 2
        elif len(tried) > SECANT_STEPS:
            x = (low + high) // 2
        else:
            a, b = tried[-2:]
            slope = (peak(b) - peak(a)) / (b - a)
            x = math.floor(b + (budget - peak(b)) / slope) if slope > 0 else 2 * b  # small batches can dip
            x = min(max(x, low + 1), high - 1)
        low, high = (x, high) if peak(x) <= budget else (low, x)
        tried.append(x)
    return low


def with_changes(plan: StepPlan, **changes) -> StepPlan:
    return replace(plan, **changes)


GRPO_PROMPT_TOKENS = 64  # the planner's allowance for a GRPO prompt (the tasks' prompts are shorter)


def recipe_plan(recipe: dict, stage: str) -> StepPlan:
    """The step a recipe's training stage will run, as the planner sees it."""
    spec = recipe[stage]
    device = "cuda" if str(spec.get("device", "cpu")).startswith("cuda") else "cpu"
    cfg = preset(recipe["preset"], use_gradient_checkpointing=bool(spec.get("grad_checkpointing", False)))
    precision = spec.get("precision", "fp32")
    precision = "bf16" if precision == "auto" and device == "cuda" else resolve_precision(precision, device)
    common = dict(precision=precision, optimizer=spec.get("optimizer", "adamw"), stage=stage, device=device)
    if stage == "grpo":
        return StepPlan(cfg, spec.get("micro_batch", 32), GRPO_PROMPT_TOKENS + spec.get("max_new_tokens", 128),
                        reference_model=spec.get("beta", 0.0) > 0, temperature=1.0, **common)
    images = bool(spec.get("image_data")) or any("visual_qa" in d for d in spec.get("data", []))
    if images and stage == "pretrain":  # pretraining with images turns the vision encoder on
        cfg = replace(cfg, use_vision=True)
    return StepPlan(cfg, spec.get("batch_size", 8), spec.get("seq_len", 256), spec.get("grad_accum", 1),
                    image_data=images and cfg.use_vision, **common)


def check_recipe_stage(recipe: dict, stage: str, free_bytes: int) -> dict:
    """Refuse a stage whose planned peak exceeds the device's free memory, naming the
    numbers and the largest micro-batch that would fit."""
    plan = recipe_plan(recipe, stage)
    result = predict(plan)
    if result["peak_bytes"] > free_bytes:
        fit = max_batch_size(plan, free_bytes)
        field_name = "micro_batch" if stage == "grpo" else "batch_size"
        gib = 2**30
        raise SystemExit(
            f"{stage}: one step is planned to need {result['peak_bytes'] / gib:.2f} GiB "
            f"({', '.join(f'{k} {v / gib:.2f}' for k, v in result['parts'].items())} GiB) but the GPU has "
            f"{free_bytes / gib:.2f} GiB free. "
            + (f"Set \"{field_name}\": {fit} in the recipe's {stage} stage (raise grad_accum to keep the tokens per "
               f"step), or turn on grad_checkpointing." if fit else
               "Not even a micro-batch of 1 fits: use a smaller preset or a larger GPU."))
    return result
