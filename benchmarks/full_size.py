"""The full-size model trains on this machine: the `berry-q0` architecture (GPT-2's
vocabulary, vision on), chunked cross-entropy and activation checkpointing, on a prepared
corpus, through `quatrix pretrain` itself.

    python benchmarks/full_size.py --data runs/bench-prepare/prepared-2 --precision bf16 --out runs/full-size

Reports, in OUT/results.json and as a table: held-out text loss at each evaluation, the
training loss per source, tokens/s; the planner's peak for this step beside the peak
measured on real tensors (quatrix.train.memory); and MFU = the language model's analytic
training FLOPs per token (quatrix.params.training_flops_per_token) x text tokens/s / the
matmul peak measured here in the same precision. The vision encoder's FLOPs are not
counted, so on image steps the figure would be a lower bound; it is computed on text steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from quatrix.cli import main as quatrix
from quatrix.config import preset
from quatrix.params import training_flops_per_token
from quatrix.tokenizer import load_tokenizer
from quatrix.train.memory import StepPlan, measure, predict

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import matmul_peak  # noqa: E402  (the same GEMM peak as the throughput benchmark)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="a `quatrix data prepare` folder (GPT-2 tokenizer)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--precision", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--out", default="runs/full-size")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    peaks = {name: matmul_peak("cpu", dtype) for name, dtype in DTYPES.items()}
    print("matmul peak: " + ", ".join(f"{k} {v / 1e9:,.1f} GFLOP/s" for k, v in peaks.items()), flush=True)

    vocab = load_tokenizer("gpt2").vocab_size  # GPT-2's 50,257 and the chat format's special tokens
    config = preset("berry-q0", vocab_size=vocab, use_vision=True, use_gradient_checkpointing=True)
    plan = StepPlan(config, args.batch_size, args.seq_len, precision=args.precision, image_data=True, device="cpu")
    predicted, measured = predict(plan)["peak_bytes"], measure(plan)["peak_bytes"]
    print(f"peak of one step: planner {predicted / 2**20:,.1f} MiB, measured {measured / 2**20:,.1f} MiB", flush=True)

    run = out / "run"
    argv = ["pretrain", "--preset", "berry-q0", "--data", args.data, "--image-data", "clevr", "--grad-checkpointing",
            "--precision", args.precision, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
            "--seq-len", str(args.seq_len), "--lr", str(args.lr), "--warmup", str(max(1, args.steps // 10)),
            "--eval-every", str(max(1, args.steps // 2)), "--save-every", str(max(1, args.steps // 2)),
            "--eval-batches", "4", "--sample-tokens", "0", "--log-format", "json", "--out", str(run)]
    if quatrix(argv) != 0:
        raise SystemExit("the pretraining run failed")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    text = [r for r in records if r.get("source") == "text"]
    tokens_per_s = statistics.median(r["tokens_per_s"] for r in text[len(text) // 2:])
    flops = training_flops_per_token(config, args.seq_len)
    first = {s: next(r["loss"] for r in records if r.get("source") == s) for s in ("text", "image")}
    tail = max(1, len(records) // 20)
    last = {s: statistics.mean(r["loss"] for r in [r for r in records if r.get("source") == s][-tail:])
            for s in ("text", "image")}
    result = {
        "command": "python " + " ".join(sys.argv), "pretrain_argv": argv, "cpu_threads": torch.get_num_threads(),
        "matmul_peak_flops": peaks, "planner_peak_bytes": predicted, "measured_peak_bytes": measured,
        "val_loss": {r["step"]: r["val_loss"] for r in records if "val_loss" in r},
        "first_loss": first, "last_loss_mean_of_last_5pct": last,
        "text_tokens_per_s_median_second_half": tokens_per_s, "training_flops_per_token": flops,
        "mfu": flops * tokens_per_s / peaks[args.precision],
        "seconds": sum(r["tokens"] / r["tokens_per_s"] for r in records if "tokens_per_s" in r),
    }
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
