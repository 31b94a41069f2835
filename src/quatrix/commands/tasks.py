"""`quatrix tasks`: the tasks eval, sft and grpo accept, or a few items of one."""

from __future__ import annotations

import argparse

from quatrix.tasks import task_from_spec, task_names


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--show", metavar="TASK", help="print a few training items of TASK[:key=value,...]")


def main(args: argparse.Namespace) -> int:
    if not args.show:
        print("\n".join(task_names()))
        return 0
    task = task_from_spec(args.show)
    index = 0
    for _ in range(3):
        item, index = task.train_item(index)
        print(f"Q: {item.question}\nA: {task.target(item)}\n")
    return 0
