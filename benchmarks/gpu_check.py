"""The GPU check: one script to run when a CUDA machine is lent (about 5 minutes on one GPU).

1. Every Q-Compass path (sdpa, matmul, chunked) and the attention baselines against the
   literal float64 reference, fp32 and bf16 autocast, values and gradients.
2. Cached decoding against full recomputation, every registry variant, fp32 and bf16.
3. The mixer benchmark at the paper's Table 10 size (benchmarks/mixer.py).
4. Decoding tokens/s with the cache, `small` preset, batch 1 and 16, Q-Compass vs attention.
5. `berry-q0` bf16 training throughput and MFU against the measured bf16 matmul peak
   (benchmarks/train_throughput.py).

Writes OUT/gpu_check.json and OUT/gpu_check.md; exit status 1 if a correctness check failed.

    python benchmarks/gpu_check.py --out $OUT
    python benchmarks/gpu_check.py --device cpu --quick --out /tmp/gpu_check   # the same script, smoke-tested
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from quatrix.attention import MultiHeadAttention
from quatrix.config import preset
from quatrix.engine import generate
from quatrix.model import QuatrixLM
from quatrix.precision import autocast_context
from quatrix.qcompass import QCompass
from quatrix.variants import VARIANTS, variant_overrides

HERE = Path(__file__).parent
TOLERANCE = {"fp32": 2e-4, "bf16": 3e-2}  # relative error (norm) against the float64 reference


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def mixer_paths(device: str, quick: bool) -> list[dict]:
    """Each path and form against the float64 reference computed on the same weights."""
    H, r, L, B = (64, 16, 48, 2) if quick else (384, 48, 512, 2)
    rows = []
    forms = [("qcompass", 1, False), ("savo", 1, True), ("mh-qcompass", 4, False), ("mh-savo", 4, True)]
    for name, heads, savo in forms:
        torch.manual_seed(0)
        mixer = QCompass(H, r, heads, savo).to(device)
        x = torch.randn(B, L, H, device=device)
        reference_mixer = QCompass(H, r, heads, savo).to(device).double()
        reference_mixer.load_state_dict(mixer.state_dict())
        x64 = x.double().requires_grad_()
        ref = reference_mixer.forward_reference(x64)
        (g_ref,) = torch.autograd.grad(ref.square().sum(), x64)
        for impl in ("sdpa", "matmul", "chunked"):
            for precision in ("fp32", "bf16"):
                xi = x.clone().requires_grad_()
                with autocast_context(device, precision):
                    out = mixer(xi, impl=impl)
                (g,) = torch.autograd.grad(out.float().square().sum(), xi)
                errors = relative_error(out, ref), relative_error(g, g_ref)
                rows.append({"check": "mixer", "form": name, "impl": impl, "precision": precision,
                             "value_error": errors[0], "grad_error": errors[1],
                             "ok": max(errors) < TOLERANCE[precision]})
    for rank in (None, r):
        torch.manual_seed(0)
        attention = MultiHeadAttention(H, 4, rank).to(device)
        x = torch.randn(B, L, H, device=device)
        for impl in ("sdpa", "matmul"):
            with autocast_context(device, "bf16"):
                fast = attention(x, impl=impl)
            exact = attention.double()(x.double(), impl="matmul")
            attention.float()
            error = relative_error(fast, exact)
            rows.append({"check": "mixer", "form": "mha" if rank is None else "mha_rank", "impl": impl,
                         "precision": "bf16", "value_error": error, "grad_error": None,
                         "ok": error < TOLERANCE["bf16"]})
    return rows


def cached_decoding(device: str, quick: bool) -> list[dict]:
    """Greedy tokens with the cache equal greedy tokens recomputed from scratch each step."""
    rows = []
    overrides = dict(vocab_size=512, hidden_size=64, num_layers=2, max_seq_len=128, q_rank=16)
    for name in VARIANTS:
        for precision in ("fp32", "bf16"):
            torch.manual_seed(0)
            model = QuatrixLM(preset("tiny", **overrides, **variant_overrides(name, 4))).to(device).eval()
            prompts = torch.randint(0, 512, (3, 20), device=device)
            steps = 8 if quick else 24
            with autocast_context(device, precision), torch.no_grad():
                cached = generate(model, prompts, steps, temperature=0).tokens
                ids = prompts
                for _ in range(steps):
                    ids = torch.cat([ids, model(ids)["logits"][:, -1].argmax(-1, keepdim=True)], dim=1)
            recomputed = ids[:, prompts.shape[1]:].tolist()
            same = sum(a == b for row_a, row_b in zip(cached, recomputed) for a, b in zip(row_a, row_b))
            # fp32 must agree exactly; bf16 rounding may flip a near-tie, so it is reported, not required
            rows.append({"check": "decode", "variant": name, "precision": precision,
                         "same_tokens": same / (3 * steps), "ok": precision == "bf16" or cached == recomputed})
    return rows


def decode_speed(device: str, quick: bool) -> list[dict]:
    rows = []
    preset_name, prompt_len, new = ("tiny", 32, 16) if quick else ("small", 512, 256)
    for batch in (1, 16):
        for name in ("qcompass", "savo", "mha"):
            torch.manual_seed(0)
            model = QuatrixLM(preset(preset_name, **variant_overrides(name, 8))).to(device).eval()
            prompts = torch.randint(0, 50257, (batch, prompt_len), device=device)
            with autocast_context(device, "bf16"):
                generate(model, prompts, 4, temperature=0)  # warm-up
                synchronize(device)
                start = time.perf_counter()
                generate(model, prompts, new, temperature=0)
                synchronize(device)
            rows.append({"check": "decode_speed", "variant": name, "batch": batch, "precision": "bf16",
                         "tokens_per_s": batch * new / (time.perf_counter() - start)})
    return rows


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def script(name: str, *flags: str) -> str:
    result = subprocess.run([sys.executable, str(HERE / name), *flags], capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        return f"{name} failed:\n{result.stderr[-2000:]}"
    return result.stdout


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test of this script)")
    p.add_argument("--out", default="runs/gpu_check")
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("no CUDA device here; pass --device cpu --quick to smoke-test the script")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    env = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
           "torch": torch.__version__, "cuda": torch.version.cuda}
    checks = mixer_paths(args.device, args.quick) + cached_decoding(args.device, args.quick)
    speeds = decode_speed(args.device, args.quick)
    if args.quick:
        mixer = script("mixer.py", "--device", args.device, "--length", "64", "--batch", "1", "--hidden", "32",
                       "--rank", "8", "--rounds", "1", "--warmup", "0", "--variants", "qcompass,mha")
        train = script("train_throughput.py", "--device", args.device, "--preset", "tiny", "--batch-size", "2",
                       "--seq-len", "32", "--steps", "1", "--warmup", "0", "--variants", "qcompass,mha",
                       "--precisions", "bf16")
    else:
        mixer = script("mixer.py", "--device", args.device, "--long-context", "8192")
        train = script("train_throughput.py", "--device", args.device, "--preset", "berry-q0", "--batch-size", "16",
                       "--seq-len", "1024", "--steps", "10", "--warmup", "3", "--precisions", "bf16",
                       "--variants", "qcompass,savo,mha")
    failed = [c for c in checks if not c["ok"]]
    summary = {"environment": env, "seconds": round(time.time() - started), "checks": checks,
               "decode_speed": speeds, "mixer_benchmark": mixer, "train_throughput": train,
               "failed": len(failed)}
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "gpu_check.md").write_text(markdown(summary))
    print((out / "gpu_check.md").read_text())
    return 1 if failed else 0


def markdown(summary: dict) -> str:
    env = summary["environment"]
    lines = [f"# GPU check: {env['device']}, torch {env['torch']}, CUDA {env['cuda']} ({summary['seconds']} s)", "",
             f"{len(summary['checks']) - summary['failed']} of {len(summary['checks'])} correctness checks passed.", "",
             "| check | form / variant | path | precision | value error | grad error / same tokens | ok |",
             "|---|---|---|---|---:|---:|---|"]
    for c in summary["checks"]:
        if c["check"] == "mixer":
            grad = "-" if c["grad_error"] is None else f"{c['grad_error']:.1e}"
            lines.append(f"| mixer | {c['form']} | {c['impl']} | {c['precision']} | {c['value_error']:.1e} | {grad} | "
                         f"{c['ok']} |")
        else:
            lines.append(f"| cached decode | {c['variant']} | engine | {c['precision']} | - | "
                         f"{c['same_tokens']:.0%} | {c['ok']} |")
    lines += ["", "| decoding | batch | tokens/s (bf16) |", "|---|---:|---:|"]
    lines += [f"| {s['variant']} | {s['batch']} | {s['tokens_per_s']:,.0f} |" for s in summary["decode_speed"]]
    lines += ["", "## Mixer benchmark", "", summary["mixer_benchmark"], "## Training throughput", "",
              summary["train_throughput"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
