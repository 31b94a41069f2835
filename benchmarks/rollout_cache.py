"""GRPO rollouts: cache memory and generation speed of Q-Compass, SAVO and attention at the
same group size.

A GRPO step samples G completions of each of P prompts from one shared prefill per prompt
(quatrix.eval.tasks.complete, as `quatrix grpo` does). This measures that call for each
variant of the same width: the cache bytes the engine allocates (reported by the engine
itself) and generated tokens/s, with no stop token so every row runs to --max-new-tokens.

    python benchmarks/rollout_cache.py                      # the tiny preset, P=16, G=8
    python benchmarks/rollout_cache.py --preset small --max-new-tokens 512
"""

from __future__ import annotations

import argparse
import time

import torch

from quatrix.config import preset
from quatrix.engine import cache_floats_per_token, generate
from quatrix.model import QuatrixLM
from quatrix.variants import VARIANTS, variant_overrides

BENCHED = ("qcompass", "savo", "mha")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--prompts", type=int, default=16, help="P")
    p.add_argument("--group-size", type=int, default=8, help="G")
    p.add_argument("--prompt-len", type=int, default=48)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per variant (median)")
    args = p.parse_args()
    torch.manual_seed(0)
    print(f"preset {args.preset}, P={args.prompts}, G={args.group_size}, prompt {args.prompt_len} tokens, "
          f"{args.max_new_tokens} new tokens, threads {torch.get_num_threads()}")
    print("| variant | floats/token/layer | cache MiB per rollout batch | generated tokens/s | vs mha (memory) |")
    print("|---|---|---|---|---|")
    rows = {}
    for name in BENCHED:
        config = preset(args.preset, **variant_overrides(name, args.heads))
        model = QuatrixLM(config).eval()
        prompts = torch.randint(0, config.vocab_size, (args.prompts, args.prompt_len))
        stats: dict = {}
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = generate(model, prompts, args.max_new_tokens, temperature=1.0, num_samples=args.group_size,
                           stats=stats, generator=torch.Generator().manual_seed(0))
            times.append(time.perf_counter() - start)
        tokens = sum(len(t) for t in out.tokens)
        rows[name] = (cache_floats_per_token(config), stats["cache_bytes"] / 2**20, tokens / sorted(times)[len(times) // 2])
    for name, (floats, mib, speed) in rows.items():
        print(f"| {VARIANTS[name].label} | {floats} | {mib:.2f} | {speed:,.0f} | {mib / rows['mha'][1]:.2f}x |")


if __name__ == "__main__":
    main()
