"""Sequence-mixer speed and memory: Q-Compass variants against attention, as ratios.

The Quatrix paper's Table 10 setting: H=384, r=48, L=1024, B=4, causal, forward + backward
of the mixer alone (and of the whole block), 8 heads for the attention baselines. Variants
are timed interleaved, round after round, in one process, and reported as the median time
and its ratio to `mha` from the same run (these machines are noisy). Peak memory is the
activation memory of one forward + backward, each case in a fresh subprocess (on CPU: how far
the step raises the resident-set high-water mark; on CUDA: max_memory_allocated).

    python benchmarks/mixer.py                      # the table in docs/results.md
    python benchmarks/mixer.py --long-context 4096  # memory of each exact path at long context
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time

import torch

import quatrix.qcompass as qc
from quatrix.blocks import QuatrixBlock
from quatrix.config import QuatrixConfig
from quatrix.params import mixer_forward_flops_per_token
from quatrix.variants import variant, variant_overrides

HEADS = 8  # heads of the multi-head variants
# benchmark-only entries: a registry variant forced onto one routing path
FORCED = {"qcompass-matmul": ("qcompass", "matmul", "Q-Compass, plain bmm (as the original package)")}
BENCHED = ("qcompass", "qcompass-matmul", "savo", "mh-qcompass", "mha_rank", "mha")


def spec(name: str) -> tuple[dict, str, str | None]:
    """(config overrides, label, forced path or None for "auto") of a benched name."""
    if name in FORCED:
        base, path, label = FORCED[name]
        return variant_overrides(base, HEADS), label, path
    v = variant(name)
    label = f"{v.label} ({HEADS} heads)" if v.multi_head else f"{v.label} (1 head)"
    return v.overrides(HEADS), label, None


def train_flops(name: str, B: int, L: int, H: int, r: int) -> float:
    """Analytic forward + backward (3x forward) matmul FLOPs of one mixer over B sequences of
    L tokens (quatrix.params.mixer_forward_flops_per_token: the causal mask halves the
    [L, L] terms; SAVO gathers in rank r and applies the folded W_o W_c)."""
    config = QuatrixConfig(hidden_size=H, q_rank=r, **spec(name)[0])
    return 3 * B * L * mixer_forward_flops_per_token(config, L)


def build(name: str, args, part: str, impl: str | None) -> torch.nn.Module:
    overrides, _, forced = spec(name)
    block = QuatrixBlock(QuatrixConfig(hidden_size=args.hidden, q_rank=args.rank, **overrides))
    block.mixer.impl = impl or forced or "auto"
    module = block.mixer if part == "mixer" else block
    return module.to(args.device)


def step(module, x, grad):
    module(x).backward(grad)
    if x.device.type == "cuda":
        torch.cuda.synchronize()


def time_variants(args, part: str) -> dict[str, float]:
    """Median seconds per forward + backward, variants interleaved round by round."""
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.length, args.hidden, device=args.device, requires_grad=True)
    grad = torch.randn_like(x)
    modules = {name: build(name, args, part, None) for name in args.variants}
    for module in modules.values():
        for _ in range(args.warmup):
            step(module, x, grad)
    times: dict[str, list[float]] = {name: [] for name in modules}
    for _ in range(args.rounds):
        for name, module in modules.items():
            start = time.perf_counter()
            step(module, x, grad)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def peak_memory(args, name: str, length: int, batch: int, impl: str | None) -> float:
    """MiB of activation memory for one forward + backward of the mixer, in a fresh process."""
    cmd = [sys.executable, __file__, "--probe", name, "--length", str(length), "--batch", str(batch),
           "--hidden", str(args.hidden), "--rank", str(args.rank), "--device", args.device]
    if impl:
        cmd += ["--impl", impl]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def probe(args) -> None:
    """Child process of `peak_memory`: one warm-free forward + backward, then report."""
    module = build(args.probe, args, "mixer", args.impl)
    tiny = torch.randn(1, 16, args.hidden, device=args.device, requires_grad=True)
    step(module, tiny, torch.ones_like(tiny))  # one-time set-up (thread pools, kernels) outside the measure
    module.zero_grad(set_to_none=True)
    x = torch.randn(args.batch, args.length, args.hidden, device=args.device, requires_grad=True)
    grad = torch.randn_like(x)
    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step(module, x, grad)
        peak = torch.cuda.max_memory_allocated() - before
    else:  # Linux: reset the resident-set high-water mark, then read how far one step raises it
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _proc_status_kib("VmRSS")
        step(module, x, grad)
        peak = (_proc_status_kib("VmHWM") - before) * 1024
    print(json.dumps({"peak_mib": max(peak, 0) / 2**20}))


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))


def auto_path(name: str, args, length: int, batch: int) -> str:
    """Which exact path `impl="auto"` takes for this variant and size (recorded, not re-derived)."""
    taken: list[str] = []
    pick = qc._pick_impl
    qc._pick_impl = lambda state, content: taken.append(pick(state, content)) or taken[-1]
    try:
        with torch.no_grad():
            build(name, args, "mixer", None)(torch.zeros(batch, length, args.hidden, device=args.device))
    finally:
        qc._pick_impl = pick
    return taken[0] if taken else "?"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=384)
    p.add_argument("--rank", type=int, default=48)
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--variants", default=",".join(BENCHED), help="comma-separated; must include mha")
    p.add_argument("--long-context", type=int, default=0, help="also measure memory at this length (B=1)")
    p.add_argument("--probe", help=argparse.SUPPRESS)
    p.add_argument("--impl", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.probe:
        return probe(args)
    args.variants = args.variants.split(",")
    unknown = set(args.variants) - set(BENCHED)
    if "mha" not in args.variants:
        p.error("--variants must include mha, the baseline of every ratio")
    if unknown:
        p.error(f"unknown variant(s) {sorted(unknown)}; choose from {list(BENCHED)}")

    print(f"device={args.device} threads={torch.get_num_threads()} torch={torch.__version__} "
          f"H={args.hidden} r={args.rank} L={args.length} B={args.batch} causal, fwd+bwd, "
          f"median of {args.rounds} interleaved rounds\n")
    mixer, block = time_variants(args, "mixer"), time_variants(args, "block")
    scores_mib = args.batch * args.length**2 * 4 / 2**20
    flops = {n: train_flops(n, args.batch, args.length, args.hidden, args.rank) for n in args.variants}
    print("| mixer | path | mixer ms | speed-up vs mha | FLOP ratio vs mha | block ms | block speed-up | peak MiB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name in args.variants:
        mem = peak_memory(args, name, args.length, args.batch, None)
        path = spec(name)[2] or auto_path(name, args, args.length, args.batch)
        print(f"| {spec(name)[1]} | {path} | {mixer[name] * 1e3:.1f} | {mixer['mha'] / mixer[name]:.2f}x | "
              f"{flops['mha'] / flops[name]:.2f}x | {block[name] * 1e3:.1f} | {block['mha'] / block[name]:.2f}x | "
              f"{mem:.0f} |")
    print(f"\nOne fp32 [B, L, L] score matrix at this size: {scores_mib:.0f} MiB.")

    if args.long_context:
        L = args.long_context
        print(f"\nLong context, L={L}, B=1, peak MiB of one forward + backward of the mixer "
              f"(one [1, L, L] fp32 matrix = {L * L * 4 / 2**20:.0f} MiB):\n")
        print("| mixer | auto path | auto | sdpa | matmul | chunked |")
        print("|---|---|---:|---:|---:|---:|")
        for name in [n for n in args.variants if spec(n)[2] is None]:
            cells = [peak_memory(args, name, L, 1, impl) for impl in (None, "sdpa", "matmul", "chunked")]
            print(f"| {spec(name)[1]} | {auto_path(name, args, L, 1)} | " + " | ".join(f"{c:.0f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
