"""Two checkpoints on the same held-out questions of a task, paired: how many questions only
the first gets right, only the second, and McNemar's exact test on those two counts.

    python benchmarks/paired_eval.py --task chain_sum:min_terms=2,max_terms=3,max_digits=1 --n 400 \
        runs/berry-small/sft/checkpoint runs/berry-small/grpo/checkpoint

Greedy, as `quatrix eval --task`. A paired test is sharper than two separate intervals: both
models answer the same questions, so only the questions they disagree on carry information.
"""

from __future__ import annotations

import argparse
import json

from quatrix.eval.tasks import mcnemar_exact


def correct(ckpt: str, task, items, max_new_tokens: int, batch: int) -> list[bool]:
    from quatrix.tasks.sampling import complete
    from quatrix.pretrained import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(ckpt)
    model.eval()
    right = []
    for start in range(0, len(items), batch):
        part = items[start : start + batch]
        out = complete(model, tokenizer, task, part, max_new_tokens=max_new_tokens)
        right += [task.score_text(text, item) >= 1.0 for text, item in zip(out.texts, part)]
    return right


def main() -> None:
    from quatrix.tasks import task_from_spec

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first")
    parser.add_argument("second")
    parser.add_argument("--task", required=True)
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=50)
    args = parser.parse_args()
    task = task_from_spec(args.task)
    items = task.eval_items(args.n)
    a = correct(args.first, task, items, args.max_new_tokens, args.batch_size)
    b = correct(args.second, task, items, args.max_new_tokens, args.batch_size)
    only_a = sum(x and not y for x, y in zip(a, b))
    only_b = sum(y and not x for x, y in zip(a, b))
    print(json.dumps({"n": args.n, "accuracy_first": sum(a) / args.n, "accuracy_second": sum(b) / args.n,
                      "only_first": only_a, "only_second": only_b, "mcnemar_exact_p": mcnemar_exact(only_a, only_b)}))


if __name__ == "__main__":
    main()
