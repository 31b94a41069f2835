"""Decoding speed against the memory-bandwidth bound, and the cache against recomputation.

Default: the bound table. Batch-1 and batch-8 greedy decoding of random-weight models at
`--preset` size (berry-q0: vision off), for each variant and weight dtype, next to the
bound measured in the same run:

    bound (tokens/s) = batch x read bandwidth / bytes read per decode step

where the bytes read per step are every weight a decode step touches (the blocks, the final
norm, the output head; not the plugins, and one embedding row is negligible) plus the cache
read at the mean decode length, and the read bandwidth is the best of three sums of a 1 GiB
fp32 tensor (what `torch` itself streams memory at, on all threads). Decode time excludes
the prefill (time to first token); every row counts. On a shared machine the bandwidth
moves by half within minutes (every reading is in `--out`'s rows), so a row pairs each
timed generation with a bandwidth reading taken just before it, and reports the median of
`--repeats` such pairs by fraction of the bound (after one generation that warms up and
compiles). The step kinds of one model, dtype and batch take turns, one generation each per
round, so that drift falls on all of them alike; "÷" is the median over rounds of a kind's
rate divided by the first kind's in the same round. A last table puts every row's median
rate against the bound at the run's median bandwidth reading.

    python benchmarks/decode.py                               # berry-q0, batch 1 and 8, fp32 and bf16
    python benchmarks/decode.py --variants qcompass --dtypes fp32 --batches 1 --steps eager

`--steps` picks the decode steps timed: `eager` (the engine's default, plain PyTorch),
`compiled` (`stream(..., compile=True)`: the compiled static-shape step with the Inductor
settings `quatrix.static_decode.inductor_options` picks, dynamo checking only the guards
that tell its graphs apart after the first step), `guarded` (that step with every guard
checked at every step), and two fixed settings of it: `frozen` (freezing alone: weights
prepacked for MKL / oneDNN, the compiled step before the C++ GEMM template) and `cpp`
(freezing and the template, at every batch and dtype, without concatenated linears). Every
run checks the first step's cached greedy tokens against one forward pass over the whole
sequence (fp32 weights: equal tokens), and the others' against the first's.

    python benchmarks/decode.py --steps eager,frozen,compiled
    python benchmarks/decode.py --dtypes bf16 --batches 8 --steps frozen,cpp

`--agreement CKPT`: greedy continuations of eight fixed prompts with fp32 and with bf16
weights, and how far they agree.

    python benchmarks/decode.py --agreement runs/full-size/run/checkpoint

`--profile`: one compiled batch-1 decode step under torch.profiler, kernel by kernel
(`--step` any of the compiled kinds above).

    python benchmarks/decode.py --profile --variant qcompass --dtype bf16
    python benchmarks/decode.py --profile --variant mha --dtype bf16 --step guarded

`--cache-table`: the older comparison (small preset, 512-token prompt, 256 new tokens): the
engine's cache against recomputing the whole sequence per token, and cache bytes of
Q-Compass and SAVO against `mha`.

    python benchmarks/decode.py --cache-table
    python benchmarks/decode.py --cache-table --batch 16 --recompute ""
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from quatrix import static_decode
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


def cache_table(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description="--cache-table: the cache against recomputation")
    p.add_argument("--preset", default="small")
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--batch", type=int, default=1, help="prompts decoded together")
    p.add_argument("--recompute", default="qcompass", help="variants also timed without a cache (comma-separated)")
    args = p.parse_args(argv)
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


# ---------------------------------------------------------------------- against the bound
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def read_bandwidth(repeats: int = 5) -> float:
    """Bytes/s at which torch streams a 1 GiB fp32 tensor through a sum (best of `repeats`)."""
    x = torch.ones(2**28)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - start)
    return x.numel() * 4 / best


def bytes_per_step(model: QuatrixLM, batch: int, mean_len: float) -> float:
    """Weights a decode step reads (blocks, final norm, output head) plus the cache at mean_len."""
    weights = sum(p.numel() * p.element_size() for name, p in model.named_parameters()
                  if name.startswith(("blocks.", "norm.")))
    head = model.head.weight
    weights += head.numel() * head.element_size()
    cache = cache_floats_per_token(model.config) * model.config.num_layers * batch * mean_len * head.element_size()
    return weights + cache


STEPS = {  # --steps: what a compiled step is held to: Inductor settings, every guard (absent: as the engine does)
    "eager": None, "compiled": {}, "guarded": {"every_guard": True},
    "frozen": {"options": [static_decode.FROZEN]}, "cpp": {"options": [static_decode.FROZEN | static_decode.CPP_GEMM]},
}


def timed_decode(model: QuatrixLM, prompts: torch.Tensor, steps: int, step: str) -> tuple[list, float]:
    """(greedy tokens, decode seconds after the first token) through `quatrix.engine.stream`."""
    new, start = [], None
    held = STEPS[step] or {}
    pick, known = static_decode.inductor_options, static_decode._known_graph
    if "options" in held:
        static_decode.inductor_options = lambda device, dtype, batch: held["options"]
    if held.get("every_guard"):
        static_decode._known_graph = contextlib.nullcontext
    try:
        for tokens, _ in stream(model, prompts, steps, temperature=0, compile=step != "eager"):
            if start is None:
                start = time.perf_counter()
            new.append(tokens)
    finally:
        static_decode.inductor_options, static_decode._known_graph = pick, known
    return torch.stack(new, 1).tolist(), time.perf_counter() - start


def interleaved(model: QuatrixLM, prompts: torch.Tensor, new_tokens: int, steps: list[str], repeats: int) -> dict:
    """{step: (first run s, [(tokens, tok/s, bandwidth)] * repeats)}: every step kind warmed up
    (and compiled) on its own copy of the model, so that their graphs live side by side, then
    `repeats` rounds of one generation per kind, each after a bandwidth reading: the machine's
    drift over minutes falls on every kind alike, and a kind's rate can be divided by the
    first kind's in the same round."""
    torch._dynamo.reset()  # each model and shape is a new graph; dynamo keeps 8 per function
    models = {step: model if step == "eager" else copy.deepcopy(model) for step in steps}
    first = {}
    for step in steps:
        start = time.perf_counter()
        timed_decode(models[step], prompts, new_tokens, step)  # warm-up (and compile)
        first[step] = time.perf_counter() - start
    runs = {step: [] for step in steps}
    batch = prompts.shape[0]
    for _ in range(repeats):
        for step in steps:
            bandwidth = read_bandwidth(3)
            tokens, seconds = timed_decode(models[step], prompts, new_tokens, step)
            runs[step].append((tokens, batch * (new_tokens - 1) / seconds, bandwidth))
    return {step: (first[step], runs[step]) for step in steps}


def at_median(rows: list[dict], baseline: str) -> None:
    """Every row's median rate against the bound at the run's median bandwidth reading: the
    machine's typical bandwidth, against which a generation that drew an outlying reading
    (the 1 GiB sum reads 26-58 GB/s within one run on a shared VM) is not judged alone."""
    readings = [e["bandwidth"] for r in rows for e in r["each"]]
    median = statistics.median(readings)
    print(f"\nAt the run's median bandwidth, {median / 1e9:.1f} GB/s ({len(readings)} readings, "
          f"{min(readings) / 1e9:.1f}-{max(readings) / 1e9:.1f}):\n")
    print(f"| mixer | weights | batch | step | median tok/s | ÷ {baseline} | of bound |")
    print("|---|---|---:|---|---:|---:|---:|")
    for r in rows:
        rate = statistics.median(e["tokens_per_s"] for e in r["each"])
        r["fraction_at_run_median"] = rate * r["bytes_per_step"] / (r["batch"] * median)
        print(f"| {r['mixer']} | {r['weights']} | {r['batch']} | {r['step']} | {rate:.1f} | {r['ratio']:.2f} | "
              f"{r['fraction_at_run_median']:.0%} |")


@torch.no_grad()
def recomputed_greedy(model: QuatrixLM, prompts: torch.Tensor, tokens: list) -> bool:
    """Whether one forward pass over prompt + generated tokens picks every generated token."""
    ids = torch.cat([prompts, torch.tensor(tokens)], 1)
    picks = model(ids)["logits"][:, prompts.shape[1] - 1 : -1].argmax(-1)
    return picks.tolist() == tokens


def bound_table(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="berry-q0")
    p.add_argument("--variants", default=",".join(BENCHED))
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--steps", default="eager,frozen,compiled", help=f"decode steps to time: {', '.join(STEPS)}")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5, help="timed generations per row, each after a bandwidth reading")
    p.add_argument("--out", help="also write the rows as JSON here")
    args = p.parse_args(argv)
    unknown = set(args.steps.split(",")) - set(STEPS)
    if unknown:
        p.error(f"unknown --steps {', '.join(sorted(unknown))}; choose from {', '.join(STEPS)}")
    print(f"threads={torch.get_num_threads()} torch={torch.__version__} preset={args.preset} (vision off) "
          f"prompt={args.prompt_len} new={args.new_tokens} greedy; per row the median of {args.repeats} "
          f"(bandwidth, generation) pairs\n")
    print(f"| mixer | weights | batch | step | tok/s | ÷ {args.steps.split(',')[0]} | read GB/s | bound tok/s | "
          "of bound | first run s | same tokens |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|")
    rows = []
    steps = args.steps.split(",")
    for name in args.variants.split(","):
        torch.manual_seed(0)
        base = QuatrixLM(preset(args.preset, use_vision=False, **variant_overrides(name, HEADS))).eval()
        for dtype_name in args.dtypes.split(","):
            model = copy.deepcopy(base).to(DTYPES[dtype_name])  # each dtype from the fp32 weights
            for batch in map(int, args.batches.split(",")):
                torch.manual_seed(1)
                prompts = torch.randint(0, model.config.vocab_size, (batch, args.prompt_len))
                nbytes = bytes_per_step(model, batch, args.prompt_len + args.new_tokens / 2)
                timings = interleaved(model, prompts, args.new_tokens, steps, args.repeats)
                reference = None
                for step, (first, runs) in timings.items():
                    consistent = all(t == runs[0][0] for t, _, _ in runs)
                    tokens, rate, bandwidth = sorted(runs, key=lambda r: r[1] / r[2])[len(runs) // 2]  # the median pair
                    bound = batch * bandwidth / nbytes
                    if reference is None:  # the first step kind is checked against recomputation
                        same = recomputed_greedy(model, prompts, tokens) if dtype_name == "fp32" else None
                        reference = tokens
                    else:
                        same = tokens == reference
                    same = same if consistent else False  # a step that decodes differently on a rerun fails
                    baseline = timings[steps[0]][1]  # the same round's generation of the first step kind
                    ratio = statistics.median(r[1] / b[1] for r, b in zip(runs, baseline))
                    inductor = None if step == "eager" else STEPS[step].get("options") or \
                        static_decode.inductor_options(prompts.device, model.head.weight.dtype, batch)
                    row = dict(mixer=name, weights=dtype_name, batch=batch, step=step, inductor=inductor,
                               tokens_per_s=rate, each=[dict(tokens_per_s=r, bandwidth=b) for _, r, b in runs],
                               bound=bound, fraction=rate / bound, first_run_s=first, ratio=ratio,
                               same_tokens=same, bandwidth=bandwidth, bytes_per_step=nbytes)
                    rows.append(row)
                    print(f"| {name} | {dtype_name} | {batch} | {step} | {rate:.1f} | {ratio:.2f} | "
                          f"{bandwidth / 1e9:.1f} | {bound:.1f} | {rate / bound:.0%} | {first:.1f} | "
                          f"{'-' if same is None else same} |", flush=True)
    at_median(rows, steps[0])
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


PROMPTS = ["The history of the city", "In the morning, the market", "Scientists have found that",
           "The best way to learn a language is", "When the war ended,", "Our new product",
           "The river runs through", "She opened the letter and"]


@torch.no_grad()
def agreement(argv: list[str]) -> None:
    """--agreement CKPT: greedy continuations of PROMPTS with fp32 and with bf16 weights;
    how many tokens agree before the first difference, and at how many positions overall."""
    from quatrix.engine import generate
    from quatrix.pretrained import load_model_and_tokenizer

    p = argparse.ArgumentParser(description="--agreement: greedy tokens with bf16 weights against fp32")
    p.add_argument("ckpt")
    p.add_argument("--new-tokens", type=int, default=64)
    args = p.parse_args(argv)
    model, tokenizer = load_model_and_tokenizer(args.ckpt)
    model.eval()
    prompts = [tokenizer.encode(text) for text in PROMPTS]
    runs = {}
    for name, dtype in DTYPES.items():
        runs[name] = [generate(model.to(dtype), [ids], args.new_tokens, temperature=0).tokens[0] for ids in prompts]
    prefix, same, total = [], 0, 0
    for a, b in zip(runs["fp32"], runs["bf16"]):
        prefix.append(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))))
        same += sum(x == y for x, y in zip(a, b))
        total += max(len(a), len(b))
    print(f"{args.ckpt}: {len(prompts)} prompts x {args.new_tokens} greedy tokens, bf16 weights against fp32")
    print(f"identical continuations: {sum(n == args.new_tokens for n in prefix)} of {len(prompts)}; tokens before "
          f"the first difference: {prefix} (mean {sum(prefix) / len(prefix):.1f}); same token at "
          f"{same} of {total} positions ({same / total:.0%})")


@torch.no_grad()
def profile(argv: list[str]) -> None:
    """--profile: where one compiled batch-1 decode step's time goes, kernel by kernel
    (torch.profiler, with Inductor's kernels named), per generated token."""
    from torch.profiler import profile as torch_profile

    p = argparse.ArgumentParser(description="--profile: the compiled decode step, kernel by kernel")
    p.add_argument("--preset", default="berry-q0")
    p.add_argument("--variant", default="qcompass", choices=BENCHED)
    p.add_argument("--dtype", default="bf16", choices=DTYPES)
    p.add_argument("--step", default="compiled", choices=[k for k in STEPS if k != "eager"])
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--rows", type=int, default=12, help="kernels and ops listed")
    args = p.parse_args(argv)
    torch._inductor.config.cpp.enable_kernel_profile = True  # Inductor's C++ kernels by name
    torch.manual_seed(0)
    model = QuatrixLM(preset(args.preset, use_vision=False, **variant_overrides(args.variant, HEADS)))
    model = model.eval().to(DTYPES[args.dtype])
    prompts = torch.randint(0, model.config.vocab_size, (1, 64))
    timed_decode(model, prompts, args.new_tokens, args.step)  # compiles
    with torch_profile() as prof:
        timed_decode(model, prompts, args.new_tokens, args.step)
    steps = args.new_tokens - 1
    print(f"{args.preset} {args.variant} {args.dtype}, {args.step} step, batch 1: per token, over {steps} "
          "compiled steps (and one 64-token prefill)\n")
    print("| kernel or op | calls per token | ms per token |")
    print("|---|---:|---:|")
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    for e in events[: args.rows]:
        print(f"| {e.key[:90]} | {e.count / steps:.1f} | {e.self_cpu_time_total / 1e3 / steps:.3f} |")


def main() -> None:
    argv = sys.argv[1:]
    if "--profile" in argv:
        profile([a for a in argv if a != "--profile"])
    elif "--agreement" in argv:
        agreement([a for a in argv if a != "--agreement"])
    elif "--cache-table" in argv:
        cache_table([a for a in argv if a != "--cache-table"])
    else:
        bound_table(argv)


if __name__ == "__main__":
    main()
