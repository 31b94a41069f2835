"""The full context at the real size: prefill and batch-1 decode at 1,024 / 2,048 / 5,120
tokens for Q-Compass, SAVO and attention (`mha`) at `berry-q0` size (vision off, fp32).

    python benchmarks/context.py --out runs/bench-context

Each (variant, context) runs in its own process, so its peak RSS is its own: the prompt is
context - 32 tokens, prefilled through the cache (the last position's logits only, as
`quatrix.engine` does for long prompts), then 32 greedy tokens are decoded one at a time, so
prompt + new tokens fill the context exactly. Reported: prefill tokens/s, decode tokens/s,
cache bytes per token (all layers) and at the full context, the process's RSS after building
the model and its peak while prefilling and decoding (Linux's VmHWM, reset after the build:
the difference is what the context costs), and at 5,120 the
largest difference between the cached logits and one forward pass over the whole sequence.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("qcompass", "savo", "mha")
CONTEXTS = (1024, 2048, 5120)
NEW = 32

CHILD = r'''
import json, sys, time
import torch
from quatrix.config import preset
from quatrix.engine import Cache, cache_floats_per_token
from quatrix.model import QuatrixLM
from quatrix.variants import variant_overrides
name, context, new, check = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
torch.manual_seed(0)
config = preset("berry-q0", use_vision=False, **variant_overrides(name))
model = QuatrixLM(config).eval()
def status(field):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(field))
built = status("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current RSS: what follows is the context's cost
prompt = torch.randint(0, config.vocab_size, (1, context - new))
with torch.inference_mode():
    cache = Cache(model, 1, context)
    t0 = time.perf_counter()
    logits = model(prompt, cache=cache, logits_to_keep=1, check_values=False)["logits"][:, -1]
    prefill = time.perf_counter() - t0
    tokens, steps = [], []
    t0 = time.perf_counter()
    for _ in range(new):
        token = logits.argmax(-1)
        tokens.append(int(token))
        steps.append(model(token[:, None], cache=cache, check_values=False)["logits"][:, -1])
        logits = steps[-1]
    decode = time.perf_counter() - t0
    peak = status("VmHWM:")  # before the check below, whose full forward keeps [L, V] logits
    largest = None
    if check:  # cached == recomputed over the whole context (the last step's token is fed too)
        whole = torch.cat([prompt, torch.tensor([tokens])], 1)
        full = model(whole, check_values=False)["logits"][0, -new:]
        largest = float((torch.stack(steps)[:, 0] - full).abs().max())
print(json.dumps({"variant": name, "context": context, "prefill_tokens_per_s": (context - new) / prefill,
                  "decode_tokens_per_s": new / decode,
                  "cache_bytes_per_token": cache_floats_per_token(config) * config.num_layers * 4,
                  "rss_after_build_bytes": built, "peak_rss_bytes": peak, "max_abs_diff_cached_vs_full": largest}))
'''


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--contexts", default=",".join(map(str, CONTEXTS)))
    p.add_argument("--out", default="runs/bench-context")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for context in (int(c) for c in args.contexts.split(",")):
        for name in args.variants.split(","):
            done = subprocess.run([sys.executable, "-c", CHILD, name, str(context), str(NEW),
                                   "1" if context == max(CONTEXTS) else "0"], capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{name} at {context}: {done.stderr[-2000:]}")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            mib = 2**20
            print(f"{name:>9} {context:>5}: prefill {row['prefill_tokens_per_s']:8,.0f} tok/s, decode "
                  f"{row['decode_tokens_per_s']:6.1f} tok/s, cache {row['cache_bytes_per_token']:,} B/token "
                  f"({row['cache_bytes_per_token'] * context / mib:,.1f} MiB), peak RSS "
                  f"{row['peak_rss_bytes'] / mib:,.0f} MiB ({(row['peak_rss_bytes'] - row['rss_after_build_bytes']) / mib:,.0f} "
                  f"above the built model)" + (f", cached vs full {row['max_abs_diff_cached_vs_full']:.1e}"
                                               if row["max_abs_diff_cached_vs_full"] is not None else ""), flush=True)
    (out / "results.json").write_text(json.dumps({"command": "python " + " ".join(sys.argv), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
