"""Decoding speed and cache size: the Q-Compass cache against recomputation and attention.

`small` preset (H=384, 6 layers), a 512-token prompt, 256 new tokens, greedy, batch 1:

  * tokens/s with the engine's cache, against recomputing the whole sequence for every new
    token (what the original package's generation does), with the same model, in the same
    run; both must produce the same tokens;
  * tokens/s and cache bytes of Q-Compass and SAVO against the `mha` baseline of the same
    width (8 heads).

    python benchmarks/decode.py
"""

from __future__ import annotations

import argparse
import time

import torch

from quatrix.config import preset
from quatrix.engine import Cache, cache_floats_per_token, generate
from quatrix.model import QuatrixLM

VARIANTS = {
    "qcompass": dict(mixer="qcompass"),
    "savo": dict(mixer="qcompass", q_value_content=True),
    "mha": dict(mixer="mha", q_heads=8),
}


@torch.no_grad()
def recompute_greedy(model: QuatrixLM, prompt: list[int], steps: int) -> list[int]:
    """The uncached loop: a full forward over prompt + everything generated, every step."""
    ids = torch.tensor([prompt])
    new: list[int] = []
    for _ in range(steps):
        token = int(model(ids)["logits"][0, -1].argmax())
        new.append(token)
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return new


@torch.no_grad()
def cached_greedy(model: QuatrixLM, prompt: list[int], steps: int) -> tuple[list[int], float, float, int]:
    """(tokens, prefill seconds, decode seconds, cache bytes) through the engine's cache."""
    cache = Cache(model, 1, len(prompt) + steps)
    start = time.perf_counter()
    logits = model(torch.tensor([prompt]), cache=cache)["logits"][:, -1]
    prefill = time.perf_counter() - start
    new = []
    start = time.perf_counter()
    for step in range(steps):
        token = logits.argmax(-1)
        new.append(int(token))
        if step < steps - 1:
            logits = model(token[:, None], cache=cache)["logits"][:, -1]
    return new, prefill, time.perf_counter() - start, cache.nbytes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--recompute", default="qcompass", help="variants also timed without a cache (comma-separated)")
    args = p.parse_args()
    torch.manual_seed(0)
    prompt = torch.randint(0, 50257, (args.prompt_len,)).tolist()
    print(f"threads={torch.get_num_threads()} torch={torch.__version__} preset={args.preset} "
          f"prompt={args.prompt_len} new={args.new_tokens} greedy, batch 1\n")
    rows = {}
    for name, overrides in VARIANTS.items():
        torch.manual_seed(0)
        model = QuatrixLM(preset(args.preset, **overrides)).eval()
        tokens, prefill, decode, nbytes = cached_greedy(model, prompt, args.new_tokens)
        assert tokens == generate(model, [prompt], args.new_tokens, temperature=0).tokens[0]
        row = dict(prefill=prefill, cached=args.new_tokens / decode, bytes=nbytes,
                   floats=cache_floats_per_token(model.config))
        if name in args.recompute.split(","):
            start = time.perf_counter()
            slow = recompute_greedy(model, prompt, args.new_tokens)
            row["recompute"] = args.new_tokens / (time.perf_counter() - start)
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
