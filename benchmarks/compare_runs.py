"""Are two `quatrix run berry` folders the same run? Compares, bit for bit, every record of
the stages' metrics.jsonl (timing fields aside), eval/results.json, samples/samples.json and
the report's evaluation table: what "training is deterministic" promises across a rerun or a
refactor on one machine.

    python benchmarks/compare_runs.py runs/berry-tiny other/runs/berry-tiny

Prints what differs and exits 1 if anything does."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TIMING = {"tokens_per_s", "gen_tokens_per_s", "seconds", "wall_s", "finished"}
STAGES = ("pretrain", "sft", "grpo")


def _records(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in path.read_text().splitlines() if line.strip()]


def _strip(value):
    """A JSON value without its timing and path fields."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in TIMING and k != "ckpt"}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def compare(a: Path, b: Path) -> list[str]:
    """The differences between two run folders, one line each (empty: the same run)."""
    problems = []
    for stage in STAGES:
        ra, rb = _records(a / stage / "metrics.jsonl"), _records(b / stage / "metrics.jsonl")
        if len(ra) != len(rb):
            problems.append(f"{stage}: {len(ra)} records against {len(rb)}")
        first = next((i for i, (x, y) in enumerate(zip(ra, rb)) if x != y), None)
        if first is not None:
            problems.append(f"{stage}: step {ra[first].get('step')} differs: {ra[first]} against {rb[first]}")
    for name in ("eval/results.json", "samples/samples.json"):
        if _strip(json.loads((a / name).read_text())) != _strip(json.loads((b / name).read_text())):
            problems.append(f"{name} differs")
    tables = [(p / "report.md").read_text().split("## Evaluation")[1].split("## Samples")[0] for p in (a, b)]
    if tables[0] != tables[1]:
        problems.append("the report's evaluation tables differ")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("first")
    p.add_argument("second")
    args = p.parse_args(argv)
    problems = compare(Path(args.first), Path(args.second))
    print("\n".join(problems) if problems else "the same run: every metrics record, evaluation and sample is equal")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
