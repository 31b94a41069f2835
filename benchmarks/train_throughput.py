"""Training throughput and model FLOPs utilisation (MFU) of Q-Compass variants against
attention, at equal width and depth (`small` preset: H=384, r=48, 6 layers, vocabulary 50,257).

MFU = analytic training FLOPs per second (quatrix.params.training_flops_per_token) over the
machine's matmul peak in the same precision, measured in this script (a large GEMM in fp32
and in bf16). Each (variant, precision) runs the same loop (AdamW, next-token loss on random
tokens; bf16 is autocast as `--precision bf16` trains); all are timed interleaved and
reported as medians.

    python benchmarks/train_throughput.py                       # fp32 and bf16
    python benchmarks/train_throughput.py --precisions fp32 --variants qcompass,mha
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

import torch

from quatrix.config import preset
from quatrix.model import QuatrixLM
from quatrix.params import training_flops_per_token
from quatrix.precision import autocast_context
from quatrix.variants import variant_overrides

BENCHED = ("qcompass", "savo", "mha")  # from quatrix.variants
HEADS = 8  # heads of the multi-head variants
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def matmul_peak(device: str, dtype: torch.dtype, size: int = 2048, reps: int = 10) -> float:
    """FLOP/s of the fastest of `reps` square GEMMs in `dtype`."""
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
    p.add_argument("--variants", default=",".join(BENCHED), help="comma-separated, from quatrix.variants")
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16")
    args = p.parse_args()
    names, precisions = args.variants.split(","), args.precisions.split(",")
    peaks = {pr: matmul_peak(args.device, DTYPES[pr]) for pr in precisions}
    setups = {}
    for name in names:
        for precision in precisions:
            torch.manual_seed(0)
            model = QuatrixLM(preset(args.preset, **variant_overrides(name, HEADS))).to(args.device)
            setups[name, precision] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4))
    ids = torch.randint(0, 50257, (args.batch_size, args.seq_len), device=args.device)
    times = {key: [] for key in setups}
    memory = {}
    for step in range(args.warmup + args.steps):
        for (name, precision), (model, opt) in setups.items():
            if args.device == "cpu" and step == 0:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # reset the high-water mark: measure this setup's first step
                before = hwm_kib()
            start = time.perf_counter()
            with autocast_context(args.device, precision):
                loss = model(ids, labels=ids, check_values=False)["loss"]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            if step == 0 and args.device == "cpu":
                memory[name, precision] = (hwm_kib() - before) / 1024
            if step >= args.warmup:
                times[name, precision].append(time.perf_counter() - start)

    tokens = args.batch_size * args.seq_len
    print(f"device={args.device} threads={torch.get_num_threads()} torch={torch.__version__} preset={args.preset} "
          f"batch={args.batch_size}x{args.seq_len} tokens, median of {args.steps} interleaved steps; measured matmul "
          f"peak " + ", ".join(f"{pr} {peaks[pr] / 1e9:.0f} GFLOP/s" for pr in precisions) + "\n")
    print("| mixer | precision | params | tokens/s | step ms | MFU (same-precision peak) | speed-up vs mha | "
          "FLOP-predicted | bf16 vs fp32 | first-step memory MiB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    median = {key: statistics.median(t) for key, t in times.items()}
    for (name, precision), (model, _) in setups.items():
        flops, tps = training_flops_per_token(model.config, args.seq_len), tokens / median[name, precision]
        mha = median.get(("mha", precision))
        speedup = f"{mha / median[name, precision]:.2f}x" if mha else "-"
        predicted = (f"{training_flops_per_token(setups['mha', precision][0].config, args.seq_len) / flops:.2f}x"
                     if mha else "-")
        versus = (f"{median[name, 'fp32'] / median[name, precision]:.2f}x"
                  if precision != "fp32" and (name, "fp32") in median else "-")
        mem = f"{memory[name, precision]:.0f}" if (name, precision) in memory else "-"
        print(f"| {name} | {precision} | {model.num_parameters() / 1e6:.1f}M | {tps:,.0f} | "
              f"{median[name, precision] * 1e3:.0f} | {100 * flops * tps / peaks[precision]:.0f}% | {speedup} | "
              f"{predicted} | {versus} | {mem} |")


if __name__ == "__main__":
    main()
