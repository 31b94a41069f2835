"""lm-evaluation-harness on a Berry run's checkpoint, both ways, beside Quatrix's own numbers
on the same items.

    python benchmarks/lm_eval_berry.py runs/berry-small --out runs/lm-eval-berry

Two local JSONL tasks (no network), built from the run's own held-out data:
  berry_math   generate_until: the first --n held-out questions of the recipe's math task.
               The harness applies the export's chat template with the reasoning instruction
               as system prompt (what `quatrix eval --task` renders), decodes greedily up to
               the recipe's max_new_tokens, and scores the text inside <answer>...</answer>
               (a regex filter) by exact match.
  berry_lines  multiple_choice: held-out Shakespeare (the validation split of the pretraining
               corpus); three lines of context (fewer where they would not fit the model's
               context), the true next line against three lines from other held-out passages.
Each runs through `quatrix serve` (the harness's `local-completions`, token-id prompts,
echo + logprobs) and on the `transformers` export (`hf`, trust_remote_code). Quatrix's own
numbers: `quatrix.eval.tasks.evaluate_task` on the same math items (`quatrix eval --task`),
and for the lines the argmax of Quatrix's own log-likelihoods of the harness's (context,
continuation) pairs, with the largest per-sample difference to the harness's. Writes
OUT/results.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

MATH_TASK = """task: berry_math
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["<|end|>"]
  max_gen_toks: {max_new_tokens}
  do_sample: false
filter_list:
  - name: answer
    filter:
      - function: regex
        regex_pattern: "<answer>\\\\s*(.*?)\\\\s*</answer>"
      - function: take_first
metric_list:
  - metric: exact_match
"""

LINES_TASK = """task: berry_lines
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
target_delimiter: ""
metric_list:
  - metric: acc
"""


def math_docs(task, n: int) -> list[dict]:
    return [{"question": item.question, "answer": str(item.answer)} for item in task.eval_items(n)]


def line_docs(n: int, tokenizer, max_len: int, seed: int = 0) -> list[dict]:
    """Held-out Shakespeare: up to three lines of context (fewer where three would not fit the
    model's context), the true next line and three lines drawn from other held-out passages,
    in a seeded order. Every context + choice fits in `max_len` tokens, so no way truncates."""
    from quatrix.data.text import read_documents, split_documents

    _, held_out = split_documents(read_documents("shakespeare"))
    passages = [[line.strip() for line in piece.splitlines() if len(line.strip()) > 20] for piece in held_out]
    passages = [p for p in passages if len(p) >= 4]
    rng = random.Random(seed)
    docs = []
    for i in range(100 * n):
        if len(docs) == n:
            return docs
        lines = passages[i % len(passages)]
        start = rng.randrange(len(lines) - 3)
        elsewhere = rng.sample([k for k in range(len(passages)) if k != i % len(passages)], 3)
        choices = [lines[start + 3], *(rng.choice(passages[j]) for j in elsewhere)]
        rng.shuffle(choices)
        for first in range(start, start + 3):  # three lines of context, else two, else one
            context = "\n".join(lines[first : start + 3]) + "\n"
            if all(len(tokenizer.encode(context + choice)) < max_len for choice in choices):
                docs.append({"context": context, "choices": choices, "answer": choices.index(lines[start + 3])})
                break
    raise ValueError(f"only {len(docs)} of {n} line items fit the model's {max_len}-token context")


def harness(tasks_dir: Path, task: str, model: str, model_args: str, chat: bool) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    from quatrix.tasks.base import REASONING_INSTRUCTION

    return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=[task], batch_size=16,
                                   task_manager=TaskManager(include_path=str(tasks_dir)), log_samples=True,
                                   apply_chat_template=chat, system_instruction=REASONING_INSTRUCTION if chat else None)


def own_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """The harness's split (trailing whitespace of the context moves to the continuation; the
    continuation is what the whole adds to the context), scored by Quatrix."""
    import torch

    from quatrix.loss import token_logprobs

    spaces = len(context) - len(context.rstrip())
    context, continuation = context[: len(context) - spaces], context[len(context) - spaces:] + continuation
    whole, prefix = tokenizer.encode(context + continuation), tokenizer.encode(context)
    with torch.no_grad():
        ids = torch.tensor([whole])
        logp = token_logprobs(model(ids)["logits"][:, :-1], ids[:, 1:])[0][0]
    return float(logp[len(prefix) - 1:].sum())


def compare_lines(results: dict, model, tokenizer) -> dict:
    samples = results["samples"]["berry_lines"]
    largest, right = 0.0, 0
    for sample in samples:
        ours = [own_loglikelihood(model, tokenizer, c, x) for c, x in sample["arguments"]]
        theirs = [r[0][0] for r in sample["resps"]]
        largest = max(largest, max(abs(a - b) for a, b in zip(ours, theirs)))
        right += int(max(range(len(ours)), key=ours.__getitem__) == sample["target"])
    return {"harness_acc": results["results"]["berry_lines"]["acc,none"], "quatrix_acc": right / len(samples),
            "largest_loglikelihood_difference": largest, "n": len(samples)}


def compare_math(results: dict, own: dict) -> dict:
    samples = results["samples"]["berry_math"]
    harness_right = [bool(s["exact_match"]) for s in sorted(samples, key=lambda s: s["doc_id"])]
    agree = sum(a == b for a, b in zip(harness_right, own["solved"]))
    return {"harness_exact_match": results["results"]["berry_math"]["exact_match,answer"],
            "quatrix_accuracy": own["accuracy"], "items_scored_alike": agree, "n": len(samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a `quatrix run berry` output folder")
    parser.add_argument("--out", default="runs/lm-eval-berry")
    parser.add_argument("--stage", default="grpo", help="whose checkpoint: pretrain, sft or grpo")
    parser.add_argument("--n", type=int, default=500, help="held-out math questions")
    parser.add_argument("--lines", type=int, default=200, help="held-out line-completion items")
    args = parser.parse_args()

    from quatrix.eval.tasks import evaluate_task
    from quatrix.hf.export import export_hf
    from quatrix.pretrained import load_model_and_tokenizer
    from quatrix.serve.app import create_app, scheduler_for
    from quatrix.serve.main import running_server
    from quatrix.tasks import task_from_spec

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    run, out = Path(args.run), Path(args.out)
    ckpt = run / args.stage / "checkpoint"
    for need in (run / "recipe.json", ckpt):
        if not need.exists():
            raise SystemExit(f"{need} not found: RUN must be a finished `quatrix run berry --out RUN` folder")
    recipe = json.loads((run / "recipe.json").read_text())
    model, tokenizer = load_model_and_tokenizer(ckpt)
    model.eval()
    task = task_from_spec(recipe["eval"]["math_task"], 0, model.config)
    new_tokens = recipe["eval"].get("max_new_tokens", 16)
    docs = math_docs(task, args.n)
    (out / "tasks").mkdir(parents=True, exist_ok=True)
    (out / "math.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    lines = line_docs(args.lines, tokenizer, model.config.max_seq_len)
    (out / "lines.jsonl").write_text("".join(json.dumps(d) + "\n" for d in lines))
    (out / "tasks" / "berry_math.yaml").write_text(MATH_TASK.format(data=out.resolve() / "math.jsonl",
                                                                    max_new_tokens=new_tokens))
    (out / "tasks" / "berry_lines.yaml").write_text(LINES_TASK.format(data=out.resolve() / "lines.jsonl"))
    export = export_hf(ckpt, out / "export")
    own = evaluate_task(model, tokenizer, task, args.n, batch_size=50, max_new_tokens=new_tokens)
    report = {"checkpoint": str(ckpt), "math_task": recipe["eval"]["math_task"], "ways": {}}
    app = create_app(scheduler_for(model, tokenizer, max_batch=16), model_name="berry")
    with running_server(app) as url:
        ways = {"local-completions (quatrix serve)": (
                    "local-completions", f"base_url={url}/v1/completions,model=berry,tokenizer_backend=huggingface,"
                                         f"tokenizer={export},tokenized_requests=True,"
                                         f"max_length={model.config.max_seq_len},num_concurrent=1,max_retries=1"),
                "hf (transformers export)": ("hf", f"pretrained={export},trust_remote_code=True,dtype=float32,"
                                                   "device=cpu")}
        for name, (kind, model_args) in ways.items():
            math_results = harness(out / "tasks", "berry_math", kind, model_args, chat=True)
            line_results = harness(out / "tasks", "berry_lines", kind, model_args, chat=False)
            report["ways"][name] = {"math": compare_math(math_results, own),
                                    "lines": compare_lines(line_results, model, tokenizer)}
            print(name, json.dumps(report["ways"][name]), flush=True)
    (out / "results.json").write_text(json.dumps(report, indent=2))
    print(f"\n| way | math exact match (harness) | `quatrix eval` accuracy | items scored alike | "
          f"lines acc (harness) | lines acc (Quatrix's log-likelihoods) | largest log-likelihood difference |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in report["ways"].items():
        m, l = r["math"], r["lines"]
        print(f"| {name} | {m['harness_exact_match']:.3f} | {m['quatrix_accuracy']:.3f} | "
              f"{m['items_scored_alike']}/{m['n']} | {l['harness_acc']:.3f} | {l['quatrix_acc']:.3f} | "
              f"{l['largest_loglikelihood_difference']:.1e} |")


if __name__ == "__main__":
    main()
