"""Kill storms: SIGKILL a pretraining run at random moments, resume it each time, and check
that the final losses equal an uninterrupted run's, bit for bit.

Each storm starts `quatrix pretrain ... --save-every 1` (with `--resume` once a checkpoint
exists), kills it with SIGKILL after a random delay, and repeats `--kills` times; then it
lets the run finish and compares every logged loss with the reference run's. Kills land in
start-up, in training steps and inside checkpoint writes alike.

    python benchmarks/kill_storm.py --storms 5 --kills 25 --out runs/kill_storm
    python benchmarks/kill_storm.py --storms 1 --kills 20 --tokenizer gpt2 --steps 200   # the issue's set-up

Writes OUT/results.json (per storm: kills, resumes that failed to start, first differing
step) and prints a summary. Exit status 1 if any storm drifted or failed to resume.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path


def pretrain_command(args, out: Path) -> list[str]:
    return [sys.executable, "-m", "quatrix.cli", "pretrain", "--preset", "tiny", "--tokenizer", args.tokenizer,
            "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
            "--save-every", "1", "--eval-every", str(args.steps), "--eval-batches", "2", "--sample-tokens", "0",
            "--seed", str(args.seed), "--device", "cpu", "--precision", args.precision, "--cache-dir", str(Path(args.out) / "token_cache"),
            *[a for d in args.data for a in ("--data", d)], "--out", str(out)]


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def reference(args) -> list[float]:
    out = Path(args.out) / "reference"
    if not (out / "summary.json").is_file():
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run(pretrain_command(args, out), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return losses(out)


def storm(args, index: int, expected: list[float]) -> dict:
    """One storm: `args.kills` SIGKILLs at random moments, each followed by a resume."""
    rng = random.Random(args.schedule_seed * 1000 + index)
    out = Path(args.out) / f"storm{index}"
    shutil.rmtree(out, ignore_errors=True)
    log = open(Path(args.out) / f"storm{index}.log", "w")
    kills, in_write, failed = 0, 0, []
    base = pretrain_command(args, out)
    for attempt in range(args.kills + 1):
        resume = ["--resume"] if attempt and (args.always_resume or (out / "checkpoint").is_dir()) else []
        proc = subprocess.Popen(base + resume, stdout=log, stderr=log, start_new_session=True)
        if attempt == args.kills:  # the last one runs to the end
            code = proc.wait()
        else:
            try:
                code = proc.wait(timeout=rng.uniform(args.min_gap, args.max_gap))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                kills += 1
                in_write += any((out / name).exists() for name in (".checkpoint.tmp", ".checkpoint.old"))
                continue
        if code != 0:
            failed.append({"attempt": attempt, "exit": code})
            if attempt == args.kills:
                break
        elif attempt < args.kills:  # finished before its kill: nothing left to interrupt
            break
    log.close()
    got = losses(out) if (out / "metrics.jsonl").is_file() else []
    first_diff = next((i + 1 for i, (a, b) in enumerate(zip(got, expected)) if a != b), None)
    if first_diff is None and len(got) != len(expected):
        first_diff = min(len(got), len(expected)) + 1
    return {"storm": index, "kills": kills, "kills_inside_checkpoint_writes": in_write, "failed_starts": failed, "steps_logged": len(got),
            "first_differing_step": first_diff, "identical": first_diff is None and not failed}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--storms", type=int, default=3)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--min-gap", type=float, default=1.0, help="seconds before a kill, at least")
    p.add_argument("--max-gap", type=float, default=3.0, help="seconds before a kill, at most")
    p.add_argument("--schedule-seed", type=int, default=0, help="fixes every storm's kill times")
    p.add_argument("--tokenizer", default="gpt2")
    p.add_argument("--data", action="append", default=[])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16"])
    p.add_argument("--always-resume", action="store_true",
                   help="pass --resume after every kill, even when no checkpoint folder is visible")
    p.add_argument("--out", default="runs/kill_storm")
    return p


def main() -> int:
    args = parser().parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    start = time.time()
    expected = reference(args)
    results = []
    for i in range(args.storms):
        results.append(storm(args, i, expected))
        print(json.dumps(results[-1]), flush=True)
    summary = {"args": vars(args), "storms": results, "kills": sum(r["kills"] for r in results),
               "kills_inside_checkpoint_writes": sum(r["kills_inside_checkpoint_writes"] for r in results),
               "identical": sum(r["identical"] for r in results), "seconds": round(time.time() - start)}
    (Path(args.out) / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{summary['identical']} of {len(results)} storms identical to the uninterrupted run "
          f"({summary['kills']} kills in all, {summary['kills_inside_checkpoint_writes']} inside checkpoint writes; "
          f"{summary['seconds']} s)")
    return 0 if summary["identical"] == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
