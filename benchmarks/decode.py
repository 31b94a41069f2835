"""Decoding speed and cache size: the Q-Compass cache against recomputation and attention.

`small` preset (H=384, 6 layers), a 512-token prompt, 256 new tokens, greedy, batch 1:

  * tokens/s with the engine's cache, against recomputing the whole sequence for every new
    token (what the original package's generation does), with the same model, in the same
    run; both must produce the same tokens;
  * tokens/s and cache bytes of Q-Compass and SAVO against the `mha` baseline of the same
    width (8 heads).

    python benchmarks/decode.py
    python benchmarks/decode.py --batch 16 --recompute ""   # where the cache size starts to matter
"""

from __future__ import annotations

import argparse
import time

import torch

from quatrix.config import preset
from quatrix.engine import cache_floats_per_token, generate, stream
from quatrix.model import QuatrixLM
from quatrix.variants import variant_overrides

BENCHED = ("qcompass", "savo", "mha")  # from quatrix.variants
HEADS = 8  # heads of the multi-head variants


@torch.no_grad()
def recompute_greedy(model: QuatrixLM, prompts: torch.Tensor, steps: int) -> list[list[int]]:
    """The uncached loop: a full forward over prompt + everything generated, every step."""
    ids = prompts
    for _ in range(steps):
        token = model(ids)["logits"][:, -1].argmax(-1)  # [B]
        ids = torch.cat([ids, token[:, None]], dim=1)
    return ids[:, prompts.shape[1] :].tolist()


@torch.no_grad()
def cached_greedy(model: QuatrixLM, prompts: torch.Tensor, steps: int):
    """(tokens, prefill seconds, decode seconds, cache bytes) through the engine (`stream`),
    as users get it: prefill is the time to the first token, decode the time for the rest."""
    start = time.perf_counter()
    new, prefill = [], None
    for tokens, _ in stream(model, prompts, steps, temperature=0):
        if prefill is None:
            prefill, start = time.perf_counter() - start, time.perf_counter()
        new.append(tokens)
    floats = cache_floats_per_token(model.config) * model.config.num_layers
    nbytes = floats * prompts.shape[0] * (prompts.shape[1] + steps) * 4  # fp32, preallocated for every step
    return torch.stack(new, 1).tolist(), prefill, time.perf_counter() - start, nbytes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--batch", type=int, default=1, help="prompts decoded together")
    p.add_argument("--recompute", default="qcompass", help="variants also timed without a cache (comma-separated)")
    args = p.parse_args()
    torch.manual_seed(0)
    prompts = torch.randint(0, 50257, (args.batch, args.prompt_len))
    print(f"threads={torch.get_num_threads()} torch={torch.__version__} preset={args.preset} "
          f"prompt={args.prompt_len} new={args.new_tokens} greedy, batch {args.batch}; tok/s counts every row\n")
    rows = {}
    for name in BENCHED:
        overrides = variant_overrides(name, HEADS)
        torch.manual_seed(0)
        model = QuatrixLM(preset(args.preset, **overrides)).eval()
        tokens, prefill, decode, nbytes = cached_greedy(model, prompts, args.new_tokens)
        assert tokens == generate(model, prompts, args.new_tokens, temperature=0).tokens
        produced = args.batch * (args.new_tokens - 1)  # the first token comes with the prefill
        row = dict(prefill=prefill, cached=produced / decode, bytes=nbytes,
                   floats=cache_floats_per_token(model.config))
        if name in args.recompute.split(","):
            start = time.perf_counter()
            slow = recompute_greedy(model, prompts, args.new_tokens)
            row["recompute"] = args.batch * args.new_tokens / (time.perf_counter() - start)
            row["same_tokens"] = slow == tokens
        rows[name] = row

    print("| mixer | cache floats/token/layer | cache MiB | prefill s | cached tok/s | recompute tok/s | "
          "cache speed-up | same tokens | tok/s vs mha | cache vs mha |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        recompute = f"{r['recompute']:.1f} | {r['cached'] / r['recompute']:.1f}x | {r['same_tokens']}" \
            if "recompute" in r else "- | - | -"
        print(f"| {name} | {r['floats']} | {r['bytes'] / 2**20:.1f} | {r['prefill']:.2f} | {r['cached']:.1f} | "
              f"{recompute} | {r['cached'] / rows['mha']['cached']:.2f}x | {r['bytes'] / rows['mha']['bytes']:.2f} |")


if __name__ == "__main__":
    main()
