"""`quatrix memory`: the peak training memory of one step, predicted on fake tensors (and
measured with --measure), and the largest micro-batch within a budget. The planner itself is
quatrix.train.memory."""

from __future__ import annotations

import argparse
import json

from quatrix.config import PRESETS, QuatrixConfig
from quatrix.train.memory import CUDA_ALLOWANCE, PARTS, StepPlan, max_batch_size, measure, predict, with_changes


UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_bytes(text: str) -> int:
    """'6GiB', '5.5 GiB', '6000MB', '123' -> bytes."""
    value = str(text).strip().replace(" ", "")
    digits = value.rstrip("BbIiKkMmGg")
    unit = value[len(digits):].upper()
    try:
        number = float(digits)
    except ValueError:
        number = None
    if number is None or unit not in UNITS or number <= 0:
        raise ValueError(f"cannot read {text!r} as a memory size; write e.g. 6GiB, 5.5GiB or 6000MB")
    return int(number * UNITS[unit])


def model_config(preset_name: str, config_file: str | None, checkpointing: bool) -> QuatrixConfig:
    from quatrix.config import preset

    overrides = {}
    if config_file:
        try:
            with open(config_file) as f:
                overrides = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read the model config {config_file}: {e}") from None
        if not isinstance(overrides, dict):
            raise ValueError(f"{config_file} must hold a JSON object of QuatrixConfig fields")
    overrides["use_gradient_checkpointing"] = checkpointing or overrides.get("use_gradient_checkpointing", False)
    return preset(preset_name, **overrides)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="berry-q0", choices=sorted(PRESETS), help="model preset")
    p.add_argument("--config", dest="model_config", default=None,
                   help="JSON file of QuatrixConfig fields that override the preset")
    p.add_argument("--batch-size", type=int, default=None, help="micro-batch (omit with --budget to find the largest)")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute each block in backward")
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "muon"])
    p.add_argument("--image-data", action="store_true", help="micro-batches carry images (pretraining with vision)")
    p.add_argument("--stage", default="pretrain", choices=["pretrain", "sft", "grpo"])
    p.add_argument("--beta", type=float, default=0.0, help="GRPO's KL weight: > 0 keeps a reference model")
    p.add_argument("--plain-loss", action="store_true",
                   help="plan the loss over whole logits instead of chunks (to see what chunking saves)")
    p.add_argument("--budget", default=None, help="memory to fit in, e.g. 6GiB")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="the device to plan for")
    p.add_argument("--measure", action="store_true", help="also run the step for real on this machine")
    p.add_argument("--json", action="store_true", help="print JSON")


def plan_from_args(args, batch_size: int) -> StepPlan:
    cfg = model_config(args.preset, args.model_config, args.grad_checkpointing)
    for name in ("seq_len", "grad_accum"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.seq_len > cfg.max_seq_len:
        raise ValueError(f"--seq-len {args.seq_len} is longer than the model's context ({cfg.max_seq_len})")
    if args.image_data and not cfg.use_vision:
        raise ValueError(f"--image-data needs a vision model; preset {args.preset} has use_vision=False")
    grpo = args.stage == "grpo"
    return StepPlan(cfg, batch_size, args.seq_len, args.grad_accum, args.precision, args.optimizer,
                    args.image_data, args.stage, args.device, reference_model=grpo and args.beta > 0,
                    temperature=1.0 if grpo else None, chunked_loss=not args.plain_loss)


def main(args) -> int:
    if args.batch_size is None and args.budget is None:
        raise ValueError("give --batch-size, or --budget to find the largest micro-batch that fits")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    budget = parse_bytes(args.budget) if args.budget else None
    plan = plan_from_args(args, args.batch_size or 1)
    largest = max_batch_size(plan, budget) if budget is not None and args.batch_size is None else None
    if largest is not None:
        plan = with_changes(plan, batch_size=max(1, largest))
    result = {"peak_bytes": 0, "parts": {}, **predict(plan), "batch_size": plan.batch_size,
              "max_batch_size": largest, "device": plan.device}
    if budget is not None:
        result["budget_bytes"], result["fits"] = budget, result["peak_bytes"] <= budget
    if args.measure:
        result["measured"] = measure(plan)
    print(json.dumps(result, indent=2) if args.json else describe(plan, result))
    return 0


def describe(plan: StepPlan, result: dict) -> str:
    mib = 2**20
    lines = [f"one {plan.stage} step: micro-batch {plan.batch_size} x {plan.seq_len}, grad-accum {plan.grad_accum}, "
             f"{plan.precision}, {plan.optimizer}, checkpointing {'on' if plan.config.use_gradient_checkpointing else 'off'}"
             f"{', images' if plan.image_data else ''}{', plain loss' if not plan.chunked_loss else ''}; planned for {plan.device}"]
    lines.append(f"  {'part':<12} {'predicted MiB':>14}" + (f" {'measured MiB':>13}" if "measured" in result else ""))
    measured = result.get("measured", {}).get("parts", {})
    for name in PARTS:
        row = f"  {name:<12} {result['parts'][name] / mib:>14,.1f}"
        if measured:
            row += f" {measured[name] / mib:>13,.1f}"
        lines.append(row)
    row = f"  {'peak':<12} {result['peak_bytes'] / mib:>14,.1f}"
    if measured:
        row += f" {result['measured']['peak_bytes'] / mib:>13,.1f}"
    lines.append(row)
    if "cuda_max_allocated" in result.get("measured", {}):
        lines.append(f"  torch.cuda.max_memory_allocated: {result['measured']['cuda_max_allocated'] / mib:,.1f} MiB")
    if plan.device == "cuda":
        lines.append(f"  (allowance: CUDA context and workspaces, {CUDA_ALLOWANCE // mib} MiB, stated, not counted)")
    lines.append("  the parts are the split at the moment of the peak; optimizer includes the update's temporaries")
    if result.get("max_batch_size") is not None:
        lines.append(f"  largest micro-batch within {result['budget_bytes'] / 2**30:.2f} GiB: {result['max_batch_size']}")
    elif "fits" in result:
        lines.append(f"  {'fits' if result['fits'] else 'does NOT fit'} in {result['budget_bytes'] / 2**30:.2f} GiB")
    return "\n".join(lines)
