"""The Berry chain on one task: a pretrained model -> SFT on the task's answers -> GRPO,
with a control that spends GRPO's wall-clock time on more SFT instead.

    python benchmarks/reasoning_chain.py --base runs/tiny-shakespeare/checkpoint --out runs/chain

(runs/tiny-shakespeare is the former main job; docs/results.md, "Text pretraining, 600 steps",
has the two commands that make it.)

Stages (each skipped when its checkpoint exists, so a rerun only redoes what is missing):
  sft      quatrix sft --init BASE --data task:TASK --steps SFT_STEPS --final-lr SFT_FINAL_LR
  grpo     quatrix grpo --init sft --task TASK --steps GRPO_STEPS         (timed)
  control  quatrix sft --init sft --data task:TASK, with as many steps as fit in GRPO's
           wall-clock time at the measured SFT speed                        (timed)
then greedy accuracy of sft, grpo and control on the same --eval-n held-out items, with 95%
Wilson intervals. Writes OUT/results.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

TASK = "chain_sum:min_terms=2,max_terms=3,max_digits=1"


def quatrix(*argv: str) -> float:
    """Run a quatrix command; its wall-clock seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "quatrix.cli", *argv], check=True)
    return time.perf_counter() - start


def evaluate(ckpt: Path, args) -> dict:
    out = subprocess.run([sys.executable, "-m", "quatrix.cli", "eval", "--ckpt", str(ckpt), "--task", args.task,
                          "--n", str(args.eval_n), "--max-new-tokens", str(args.max_new_tokens), "--batch-size", "100",
                          "--json"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="runs/tiny-shakespeare/checkpoint", help="a pretrained checkpoint")
    p.add_argument("--task", default=TASK)
    p.add_argument("--out", default="runs/chain")
    p.add_argument("--sft-steps", type=int, default=750)
    p.add_argument("--sft-lr", default="2e-3")
    p.add_argument("--sft-final-lr", default="0.5", help="where SFT's cosine ends, as a fraction of --sft-lr")
    p.add_argument("--grpo-steps", type=int, default=300)
    p.add_argument("--grpo-lr", default="2e-4")
    p.add_argument("--prompts-per-step", default="16")
    p.add_argument("--group-size", default="8")
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.add_argument("--eval-n", type=int, default=500)
    args = p.parse_args()
    out = Path(args.out)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {"task": args.task}
    sft_common = ["--data", f"task:{args.task}", "--batch-size", "32", "--seq-len", "128", "--lr", args.sft_lr,
                  "--final-lr", args.sft_final_lr, "--eval-n", "64", "--sample-tokens", "0"]

    if not (out / "sft" / "checkpoint").is_dir():
        results["sft_seconds"] = quatrix("sft", "--init", args.base, *sft_common, "--steps", str(args.sft_steps),
                                         "--warmup", "50", "--eval-every", "250", "--save-every", "250",
                                         "--out", str(out / "sft"))
    if not (out / "grpo" / "checkpoint").is_dir():
        results["grpo_seconds"] = quatrix(
            "grpo", "--init", str(out / "sft" / "checkpoint"), "--task", args.task, "--steps", str(args.grpo_steps),
            "--prompts-per-step", args.prompts_per_step, "--group-size", args.group_size, "--micro-batch", "32",
            "--max-new-tokens", str(args.max_new_tokens), "--lr", args.grpo_lr, "--eval-every", "50",
            "--eval-n", "200", "--save-every", "50", "--out", str(out / "grpo"))
    if not (out / "control" / "checkpoint").is_dir():
        steps = max(1, round(results["grpo_seconds"] * args.sft_steps / results["sft_seconds"]))
        results["control_steps"] = steps
        results["control_seconds"] = quatrix("sft", "--init", str(out / "sft" / "checkpoint"), *sft_common,
                                             "--steps", str(steps), "--warmup", "50", "--eval-every", "0",
                                             "--save-every", "0", "--out", str(out / "control"))
    for stage in ("sft", "grpo", "control"):
        results[stage] = evaluate(out / stage / "checkpoint", args)
    results_path.write_text(json.dumps(results, indent=2))

    print(f"| model | steps | wall s | greedy accuracy on {args.eval_n} held-out | 95% CI | format |")
    print("|---|---|---|---|---|---|")
    rows = [("SFT", args.sft_steps, results.get("sft_seconds")),
            ("SFT -> GRPO", args.grpo_steps, results.get("grpo_seconds")),
            ("SFT -> more SFT (control)", results.get("control_steps"), results.get("control_seconds"))]
    for (name, steps, seconds), stage in zip(rows, ("sft", "grpo", "control")):
        r = results[stage]
        print(f"| {name} | {steps} | {seconds:.0f} | {r['accuracy']:.3f} | {r['ci95'][0]:.3f}-{r['ci95'][1]:.3f} | "
              f"{r['format_rate']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
