"""Joint pretraining on text, image-text, audio-text and world-model batches (the Quatrix
paper's mixture), and its non-interference check: does the text model suffer?

    python benchmarks/joint_mixture.py --out runs/joint

Runs (each skipped when its checkpoint exists):
  tokenizer  quatrix tokenizer train --data shakespeare --vocab-size VOCAB
  world      quatrix world collect --env MiniGrid-Empty-8x8-v0 --episodes 100 --image-size 32
  joint      quatrix pretrain --image-data clevr --audio-data spoken-digits --world-data world
             --mixture text=0.35,image=0.25,audio=0.2,world=0.2 --steps STEPS
  text-equal quatrix pretrain (text only) for as many steps as the joint run spent on text:
             the same seed, so the very same text batches, the same number of text tokens
  text-steps quatrix pretrain (text only) for STEPS steps: the same number of updates
Then the held-out text loss of each (the runs' own final validation, same batches), the
joint run's final training loss per source, and its world model against the copy-state
baseline (`quatrix world eval`). Writes OUT/results.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

MIXTURE = "text=0.35,image=0.25,audio=0.2,world=0.2"


def quatrix(*argv: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "quatrix.cli", *argv], check=True)
    return time.perf_counter() - start


def warmup(steps: int) -> str:
    return str(min(20, steps // 2))


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/joint")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--mixture", default=MIXTURE)
    p.add_argument("--vocab-size", type=int, default=2048)
    p.add_argument("--seed", default="0")
    p.add_argument("--episodes", default="100", help="MiniGrid-Empty-8x8 episodes to collect")
    p.add_argument("--clips", default="4000", help="synthesized spoken-digit clips")
    args = p.parse_args()
    out = Path(args.out)
    tokenizer = str(out / "tokenizer")
    if not (out / "tokenizer").is_dir():
        quatrix("tokenizer", "train", "--data", "shakespeare", "--vocab-size", str(args.vocab_size), "--out", tokenizer)
    if not (out / "world" / "manifest.json").is_file():
        quatrix("world", "collect", "--env", "MiniGrid-Empty-8x8-v0", "--episodes", args.episodes, "--image-size", "32",
                "--seed", "0", "--out", str(out / "world"))
    run_args = ["--preset", "tiny", "--tokenizer", tokenizer, "--batch-size", "16", "--seq-len", "128", "--seed",
                args.seed, "--eval-batches", "50", "--sample-tokens", "0"]
    previous = out / "results.json"
    seconds = json.loads(previous.read_text())["seconds"] if previous.is_file() else {}
    if not (out / "joint" / "checkpoint").is_dir():
        seconds["joint"] = quatrix("pretrain", *run_args, "--image-data", "clevr", "--audio-data",
                                   f"spoken-digits:n={args.clips}", "--world-data", str(out / "world"), "--mixture",
                                   args.mixture, "--steps", str(args.steps), "--warmup", warmup(args.steps),
                                   "--eval-every", "500",
                                   "--save-every", "500", "--out", str(out / "joint"))
    joint = records(out / "joint")
    text_steps = sum(r["source"] == "text" for r in joint)
    for name, steps in (("text-equal", text_steps), ("text-steps", args.steps)):
        if not (out / name / "checkpoint").is_dir():
            seconds[name] = quatrix("pretrain", *run_args, "--steps", str(steps), "--warmup", warmup(steps),
                                    "--eval-every", "500",
                                    "--save-every", "500", "--out", str(out / name))
    done = subprocess.run([sys.executable, "-m", "quatrix.cli", "world", "eval", "--ckpt",
                           str(out / "joint" / "checkpoint"), "--data", str(out / "world")],
                          check=True, capture_output=True, text=True)
    world = json.loads(done.stdout)
    tail = joint[-len(joint) // 10:]
    per_source = {}
    for r in tail:
        per_source.setdefault(r["source"], []).append(r["loss"])
    results = {
        "steps": args.steps, "mixture": args.mixture, "text_steps": text_steps,
        "val_loss": {name: records(out / name)[-1]["val_loss"] for name in ("joint", "text-equal", "text-steps")},
        "joint_final_train_loss": {k: sum(v) / len(v) for k, v in sorted(per_source.items())},
        "world": world, "seconds": seconds,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    v = results["val_loss"]
    print(f"| run | steps | text steps | held-out text loss |\n|---|---|---|---|\n"
          f"| joint ({args.mixture}) | {args.steps} | {text_steps} | {v['joint']:.3f} |\n"
          f"| text only, same text tokens | {text_steps} | {text_steps} | {v['text-equal']:.3f} |\n"
          f"| text only, same steps | {args.steps} | {args.steps} | {v['text-steps']:.3f} |")
    print("joint run, mean training loss per source over the last 10% of steps:",
          ", ".join(f"{k} {x:.3f}" for k, x in results["joint_final_train_loss"].items()))
    print(f"joint run's world model: mse {world['mse']:.4f} vs copy-state {world['mse_copy_state']:.4f}, "
          f"action accuracy {world['action_accuracy']:.3f} (chance {world['action_chance']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
