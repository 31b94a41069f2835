"""TRL's SFTTrainer and PEFT LoRA on a Berry run's `transformers` export: a task the run never
trained on, held-out loss and greedy accuracy before and after, trainable parameters.

    python benchmarks/finetune_export.py runs/berry-small --out runs/finetune-export

The export of the run's GRPO checkpoint (`quatrix export hf`) is finetuned twice from the
same start, on conversations of --task (default: chain_sum with four one-digit terms; the
run saw two and three) in TRL's conversational prompt-completion form, so the loss covers
the assistant's answer only:
  full   TRL SFTTrainer, every parameter;
  lora   TRL SFTTrainer with a PEFT LoRA adapter on every linear layer (`all-linear`).
Before and after: TRL's held-out loss on --n-eval held-out conversations, and greedy
accuracy on them (`model.generate` through the export's chat template, scored by the task's
own checker, as `quatrix eval --task` scores). Writes OUT/results.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def conversations(task, items) -> list[dict]:
    rows = []
    for item in items:
        *prompt, answer = task.conversation(item)
        rows.append({"prompt": prompt, "completion": [answer]})
    return rows


def accuracy(model, tokenizer, task, items, max_new_tokens: int) -> float:
    import torch

    right = 0
    model.eval()
    for start in range(0, len(items), 50):
        chunk = items[start : start + 50]
        batch = tokenizer.apply_chat_template([task.prompt(item) for item in chunk], add_generation_prompt=True,
                                              return_tensors="pt", return_dict=True, padding=True)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
        texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        right += sum(task.score_text(text, item) >= 1.0 for text, item in zip(texts, chunk))
    return right / len(items)


def finetune(export: Path, out: Path, lora: bool, train, held_out, task, eval_items, args) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    model = AutoModelForCausalLM.from_pretrained(export, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(export)
    config = SFTConfig(output_dir=str(out), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                       learning_rate=args.lr_lora if lora else args.lr, lr_scheduler_type="constant", max_length=128,
                       use_cpu=True, bf16=False, logging_steps=min(10, args.steps), save_strategy="no",
                       report_to="none", disable_tqdm=True, seed=0, per_device_eval_batch_size=50)
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(train),
                         eval_dataset=Dataset.from_list(held_out), processing_class=tokenizer,
                         peft_config=LoraConfig(target_modules="all-linear", r=8, lora_alpha=16) if lora else None)
    trained = trainer.model
    trainable = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trained.parameters())
    before = {"eval_loss": trainer.evaluate()["eval_loss"],
              "accuracy": accuracy(trained, tokenizer, task, eval_items, args.max_new_tokens)}
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    after = {"eval_loss": trainer.evaluate()["eval_loss"],
             "accuracy": accuracy(trained, tokenizer, task, eval_items, args.max_new_tokens)}
    return {"trainable": trainable, "total": total, "before": before, "after": after,
            "train_loss_first_last": [losses[0], losses[-1]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a `quatrix run berry` output folder")
    parser.add_argument("--out", default="runs/finetune-export")
    parser.add_argument("--task", default="chain_sum:min_terms=4,max_terms=4,max_digits=1")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3, help="full finetuning")
    parser.add_argument("--lr-lora", type=float, default=5e-3, help="LoRA adapters")
    parser.add_argument("--n-eval", type=int, default=200)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()

    from quatrix.hf.export import export_hf
    from quatrix.pretrained import load_model_and_tokenizer
    from quatrix.tasks import task_from_spec

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    run, out = Path(args.run), Path(args.out)
    ckpt = run / "grpo" / "checkpoint"
    if not ckpt.exists():
        raise SystemExit(f"{ckpt} not found: RUN must be a finished `quatrix run berry --out RUN` folder")
    model, _ = load_model_and_tokenizer(ckpt)
    task = task_from_spec(args.task, 0, model.config)
    items, index = [], 0
    for _ in range(args.steps * args.batch_size):
        item, index = task.train_item(index)
        items.append(item)
    train = conversations(task, items)
    eval_items = task.eval_items(args.n_eval)
    held_out = conversations(task, eval_items)
    export = export_hf(ckpt, out / "export")
    results = {"checkpoint": str(ckpt), "task": args.task, "steps": args.steps, "batch_size": args.batch_size}
    for name, lora in (("full", False), ("lora", True)):
        results[name] = finetune(export, out / name, lora, train, held_out, task, eval_items, args)
        print(name, json.dumps(results[name]), flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print("\n| TRL SFTTrainer | trainable parameters | held-out loss before → after | "
          "greedy accuracy before → after |")
    print("|---|---:|---|---|")
    for name, label in (("full", "full model"), ("lora", "PEFT LoRA, all-linear, r=8")):
        r = results[name]
        print(f"| {label} | {r['trainable']:,} of {r['total']:,} | {r['before']['eval_loss']:.3f} → "
              f"{r['after']['eval_loss']:.3f} | {r['before']['accuracy']:.3f} → {r['after']['accuracy']:.3f} |")


if __name__ == "__main__":
    main()
