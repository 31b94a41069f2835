"""Training throughput and model FLOPs utilisation (MFU) of Q-Compass variants against
attention, at equal width and depth (`small` preset: H=384, r=48, 6 layers, vocabulary 50,257).

MFU = analytic training FLOPs per second (quatrix.params.training_flops_per_token) over the
machine's matmul peak, measured in this script (a large fp32 GEMM on CPU, bf16 on CUDA).
Each variant runs the same loop (AdamW, next-token loss on random tokens); variants are
timed interleaved and reported as medians.

    python benchmarks/train_throughput.py
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

import torch

from quatrix.config import preset
from quatrix.model import QuatrixLM
from quatrix.variants import variant_overrides
from quatrix.params import training_flops_per_token

BENCHED = ("qcompass", "savo", "mha")  # from quatrix.variants
HEADS = 8  # heads of the multi-head variants


def matmul_peak(device: str, size: int = 2048, reps: int = 10) -> float:
    """FLOP/s of the fastest of `reps` square GEMMs (fp32 on CPU, bf16 on CUDA)."""
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    best = float("inf")
    for _ in range(reps + 2):
        start = time.perf_counter()
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def hwm_kib() -> int:
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    peak = matmul_peak(args.device)
    torch.manual_seed(0)
    setups = {}
    for name in BENCHED:
        overrides = variant_overrides(name, HEADS)
        model = QuatrixLM(preset(args.preset, **overrides)).to(args.device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        setups[name] = (model, opt)
    ids = torch.randint(0, 50257, (args.batch_size, args.seq_len), device=args.device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.device.startswith("cuda"))
    times = {name: [] for name in setups}
    memory = {}
    for step in range(args.warmup + args.steps):
        for name, (model, opt) in setups.items():
            if args.device == "cpu" and step == 0:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # reset the high-water mark: measure this variant's first step
                before = hwm_kib()
            start = time.perf_counter()
            with autocast:
                loss = model(ids, labels=ids)["loss"]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            if step == 0 and args.device == "cpu":
                memory[name] = (hwm_kib() - before) / 1024
            if step >= args.warmup:
                times[name].append(time.perf_counter() - start)

    tokens = args.batch_size * args.seq_len
    print(f"device={args.device} threads={torch.get_num_threads()} torch={torch.__version__} preset={args.preset} "
          f"batch={args.batch_size}x{args.seq_len} tokens, median of {args.steps} interleaved steps; "
          f"measured matmul peak {peak / 1e9:.1f} GFLOP/s\n")
    print("| mixer | params | tokens/s | step ms | MFU | speed-up vs mha | FLOP-predicted speed-up | "
          "achieved / predicted | first-step memory MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    flops = {n: training_flops_per_token(m.config, args.seq_len) for n, (m, _) in setups.items()}
    median = {n: statistics.median(t) for n, t in times.items()}
    for name, (model, _) in setups.items():
        tps = tokens / median[name]
        speedup, predicted = median["mha"] / median[name], flops["mha"] / flops[name]
        mem = f"{memory[name]:.0f}" if name in memory else "-"
        print(f"| {name} | {model.num_parameters() / 1e6:.1f}M | {tps:,.0f} | {median[name] * 1e3:.0f} | "
              f"{100 * flops[name] * tps / peak:.0f}% | {speedup:.2f}x | {predicted:.2f}x | "
              f"{100 * speedup / predicted:.0f}% | {mem} |")


if __name__ == "__main__":
    main()
