"""`quatrix run berry`: the whole Berry recipe in one command, resumable, with a report.

    quatrix run berry --preset tiny --out runs/berry-tiny          # a CPU, about 10 minutes
    quatrix run berry --preset berry-q0 --nproc 8 --out runs/q0    # GPUs, under torchrun
    quatrix run berry --print-recipe > my.json; quatrix run berry --recipe my.json

Stages, in order: tokenizer -> pretrain (text mixed with image-text, and audio-text where
the recipe has it) -> sft -> grpo -> eval -> samples; then OUT/report.md. Each training
stage is the stage's own command (`quatrix pretrain`, ...) in a child process (under
`torch.distributed.run` with --nproc > 1) writing to OUT/STAGE, so its metrics, plots,
checkpoints and exact resume are the stage's. A finished stage is recorded in
OUT/stages.json and not redone; an interrupted one is rerun with --resume and continues
from its last checkpoint. Ctrl-C stops the stage and the runner; the same command resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from quatrix.io import atomic_write_json
from quatrix.progress import LOG_FORMATS
from quatrix.train.report import evaluate_run, sample_run, summary_table, write_report
from quatrix.train.recipe import STAGES, TRAINING, load_recipe, recipe_names, stage_flags

STAGES_FILE = "stages.json"
RECIPE_FILE = "recipe.json"
REPORT_FILE = "report.md"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", choices=["berry"], help="the recipe to run (berry: tokenizer to chat model)")
    p.add_argument("--preset", default="tiny", choices=recipe_names(), help="the built-in recipe of this preset")
    p.add_argument("--recipe", dest="recipe_file", help="a recipe file (JSON) instead of the preset's")
    p.add_argument("--out", help="run directory (default runs/berry-PRESET)")
    p.add_argument("--data", nargs="+", default=None,
                   help="pretraining text: a `quatrix data prepare` folder (or corpora/files), replacing the recipe's")
    p.add_argument("--print-recipe", action="store_true", help="print the resolved recipe as JSON and exit")
    p.add_argument("--nproc", type=int, default=1, help="processes (GPUs) per training stage, through torchrun")
    p.add_argument("--force", action="store_true", help="run a GPU recipe on a CPU anyway")
    p.add_argument("--quiet", action="store_true", help="no progress lines from the stages")
    p.add_argument("--log-format", choices=LOG_FORMATS, default=None,
                   help="the stages' progress lines as text or JSON objects (default: text)")
    p.add_argument("--interrupt", metavar="STAGE:STEP", help=argparse.SUPPRESS)  # tests: die inside a stage


def main(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.preset, args.recipe_file)
    if args.data:
        recipe["pretrain"]["data"] = args.data
    if args.print_recipe:
        print(json.dumps(recipe, indent=2))
        return 0
    if args.nproc < 1:
        raise ValueError(f"--nproc must be at least 1, got {args.nproc}")
    check_hardware(recipe, args.force)
    if "data" in recipe["pretrain"] and not recipe["pretrain"]["data"]:
        raise ValueError(f"the {recipe['name']} recipe pretrains on a corpus you name: prepare one "
                         f"(quatrix data prepare --data FILES --tokenizer gpt2 --out DIR) and add --data DIR")
    if args.quiet or args.log_format:  # the stages and the data they make read it (quatrix.progress)
        os.environ["QUATRIX_LOG"] = "quiet" if args.quiet else args.log_format
    out = Path(args.out or f"runs/berry-{recipe['preset']}")
    claim_directory(out, recipe)
    done = read_done(out)
    start = time.perf_counter()
    try:
        for number, stage in enumerate(STAGES, 1):
            if stage in done:
                print(f"[{number}/{len(STAGES)}] {stage}: done ({done[stage]['seconds']:.0f} s), skipped")
                continue
            print(f"[{number}/{len(STAGES)}] {stage}: starting; {clock(time.perf_counter() - start)} elapsed, "
                  f"{remaining(recipe, done, stage)} left", flush=True)
            t0 = time.perf_counter()
            status = run_stage(stage, recipe, out, args)
            if status in (130, -2):  # the stage was interrupted (Ctrl-C reaches it too)
                raise KeyboardInterrupt
            if status != 0:
                print(f"run berry: stage {stage} failed (exit status {status}); fix the cause and rerun the same "
                      f"command to resume", file=sys.stderr)
                return status
            done[stage] = {"seconds": time.perf_counter() - t0, "finished": time.time()}
            atomic_write_json(out / STAGES_FILE, done)
    except KeyboardInterrupt:
        print(f"\nrun berry: stopped. Rerun the same command to resume from {out}.", file=sys.stderr)
        return 130
    report = write_report(out)
    print(f"\nreport: {report}\n")
    print(summary_table(out))
    return 0


def check_hardware(recipe: dict, force: bool) -> None:
    import torch

    if recipe.get("needs_gpu") and not torch.cuda.is_available() and not force:
        raise ValueError(f"recipe {recipe.get('name', recipe['preset'])} is sized for GPUs (see the README for its "
                           "hardware and time) and no CUDA device is visible; use --preset tiny on a CPU, or "
                           "--force to run it here anyway")


def claim_directory(out: Path, recipe: dict) -> None:
    """OUT belongs to one recipe: a rerun with another one would mix two runs' stages."""
    saved = out / RECIPE_FILE
    if saved.is_file():
        previous = json.loads(saved.read_text())
        if previous != recipe:
            changed = sorted(k for k in set(previous) | set(recipe) if previous.get(k) != recipe.get(k))
            raise ValueError(f"{out} holds a run of another recipe (it differs in {', '.join(changed)}); use a new "
                             "--out, or the recipe it was started with")
    else:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(saved, recipe)


def read_done(out: Path) -> dict:
    path = out / STAGES_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def remaining(recipe: dict, done: dict, stage: str) -> str:
    """The recipe's expected seconds for the stages still to run, scaled by how the finished
    ones compared with their expectation on this machine."""
    expected = recipe.get("expected_seconds", {})
    if not expected:
        return "unknown time"
    todo = STAGES[STAGES.index(stage):]
    finished = [s for s in done if expected.get(s)]
    measured = sum(expected[s] for s in finished) >= 60  # a few seconds' stage says little about this machine
    scale = sum(done[s]["seconds"] for s in finished) / sum(expected[s] for s in finished) if measured else 1.0
    guess = "" if measured else " (the recipe's estimate)"
    return f"about {clock(scale * sum(expected.get(s, 0) for s in todo))}{guess}"


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


# ---------------------------------------------------------------------- stages
def run_stage(stage: str, recipe: dict, out: Path, args) -> int:
    if stage == "tokenizer":
        tok = recipe["tokenizer"]
        if "name" in tok:
            return 0
        return command(["tokenizer", "train", *stage_flags(tok), "--out", str(out / "tokenizer")])
    if stage in TRAINING:
        check_memory(recipe, stage)
        argv = [stage, *stage_flags(recipe[stage]), *links(stage, recipe, out)]
        if (out / stage).is_dir():  # an interrupted stage: continue from its last checkpoint
            argv.append("--resume")
        if args.interrupt and args.interrupt.split(":")[0] == stage:
            argv += ["--stop-after", args.interrupt.split(":")[1]]
            status = command(argv, args.nproc)
            raise KeyboardInterrupt if status == 0 else SystemExit(status)
        return command(argv, args.nproc)
    if stage == "eval":
        evaluate_run(out, recipe)
        return 0
    sample_run(out, recipe)
    return 0


def check_memory(recipe: dict, stage: str) -> None:
    """Before a GPU stage starts: does its planned step fit the GPU's free memory? Refuses
    with the planner's numbers and a micro-batch that fits (quatrix.train.memory)."""
    import torch  # here, like check_hardware: the runner itself starts without torch

    from quatrix.train.memory import check_recipe_stage

    if str(recipe[stage].get("device", "cpu")).startswith("cuda") and torch.cuda.is_available():
        check_recipe_stage(recipe, stage, torch.cuda.mem_get_info()[0])


def links(stage: str, recipe: dict, out: Path) -> list[str]:
    """What ties the stages together: each starts from the one before and writes OUT/STAGE."""
    if stage == "pretrain":
        tok = recipe["tokenizer"]
        return ["--preset", recipe["preset"], "--tokenizer", tok.get("name", str(out / "tokenizer")),
                "--out", str(out / "pretrain")]
    before = {"sft": "pretrain", "grpo": "sft"}[stage]
    return ["--init", str(out / before / "checkpoint"), "--out", str(out / stage)]


def command(argv: list[str], nproc: int = 1) -> int:
    """Run `quatrix ARGV` in a child process (torchrun for nproc > 1); its exit status."""
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"] if nproc > 1 else \
        [sys.executable]
    return subprocess.run([*launcher, "-m", "quatrix.cli", *argv], env=os.environ.copy()).returncode
