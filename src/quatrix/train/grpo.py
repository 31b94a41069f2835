"""Stage 3 of the Berry recipe: GRPO on a task with verifiable answers.

    quatrix grpo --init runs/sft/checkpoint --task chain_sum:max_terms=3,max_digits=1 --steps 100 --out runs/grpo

Each step: P prompts of the task's training stream; G completions of each, sampled by the
engine from one shared prefill per prompt; rewards (quatrix.tasks.rewards); advantages
relative to each prompt's group; then --num-iterations optimisation passes over those
rollouts with the clipped surrogate of quatrix.rl (in micro-batches, so memory does not
grow with P*G). With --beta > 0 a frozen copy of the --init model is the KL reference;
with beta = 0 none is built.

Log-probabilities are taken at the sampling temperature (the distribution the completions
came from); top-p truncation is not modelled in them, as in common implementations.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from quatrix.chat import END
from quatrix.eval.tasks import complete, evaluate_task, prompt_batch
from quatrix.rl import LOSS_TYPES, SCALES, clip_fraction, group_advantages, grpo_loss, k3_kl, token_logprobs
from quatrix.tasks import task_from_spec
from quatrix.tasks.rewards import parse_reward_weights, score_completion
from quatrix.train import common
from quatrix.train.sft import load_init
from quatrix.validation import float_in, int_at_least, nonnegative_float, positive_float, positive_int

REWARD_PLOT_NAME = "reward.png"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="a JSON file of these options (command-line flags override it)")
    p.add_argument("--init", required=True, help="checkpoint to start from (with its tokenizer), e.g. an SFT run's")
    p.add_argument("--task", required=True, help="NAME[:key=value,...]: any reasoning-gym task, or visual_qa")
    p.add_argument("--prompts-per-step", type=positive_int, default=8, help="P: prompts per step per process")
    p.add_argument("--group-size", type=int_at_least(2), default=8, help="G: completions per prompt")
    p.add_argument("--micro-batch", type=positive_int, default=16, help="completions per forward/backward pass")
    p.add_argument("--beta", type=nonnegative_float, default=0.0, help="KL penalty weight (0: no reference model)")
    p.add_argument("--epsilon", type=float_in(0.0, 1.0, low_open=True, high_open=True), default=0.2)
    p.add_argument("--epsilon-high", type=positive_float, default=None, help="upper clip (default: --epsilon)")
    p.add_argument("--loss-type", choices=LOSS_TYPES, default="dapo")
    p.add_argument("--scale-rewards", choices=SCALES, default="group")
    p.add_argument("--num-iterations", type=positive_int, default=1,
                   help="μ: optimisation passes over each batch of rollouts")
    p.add_argument("--max-new-tokens", type=positive_int, default=32)
    p.add_argument("--temperature", type=positive_float, default=1.0)
    p.add_argument("--top-p", type=float_in(0.0, 1.0, low_open=True), default=1.0)
    p.add_argument("--mask-truncated", action="store_true",
                   help="no loss on completions that ran out of tokens before ending (DAPO's overlong filter)")
    p.add_argument("--reward-weights", default="correct=1,format=0.1,length=0",
                   help="weights of the rewards correct, format and length")
    p.add_argument("--eval-n", type=positive_int, default=100, help="held-out items for greedy evaluation")
    common.add_run_arguments(p, steps=100, lr=2e-5, warmup=0, eval_every=20, save_every=20, out="runs/grpo",
                             weight_decay=0.0)
    p.add_argument("--stop-after", type=positive_int, default=None, help=argparse.SUPPRESS)  # tests: die here


def main(args: argparse.Namespace) -> int:
    args.reward_weights_resolved = parse_reward_weights(args.reward_weights)
    return common.run_stage(args, run)


class PromptStream:
    """The task's training items in order, from this process's own index range; the position is plain data."""

    def __init__(self, task, rank: int = 0):
        from quatrix.data.sft import SFTLoader

        self.task, self.index = task, rank * SFTLoader.RANK_STRIDE

    def next(self, n: int) -> list:
        items = []
        for _ in range(n):
            item, self.index = self.task.train_item(self.index)
            items.append(item)
        return items

    def state_dict(self) -> dict:
        return {"index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.index = state["index"]


def run(args: argparse.Namespace, d: common.Dist) -> int:
    # ---------------------------------------------------------------- set-up, model, task
    out = Path(args.out)
    device, checkpoint = common.prepare_run(args, d, out, "grpo")
    model, tokenizer = load_init(args.init, device)
    task = task_from_spec(args.task, args.seed, model.config)
    common.freeze_unused_plugins(model, set(task.media))
    reference = None
    if args.beta > 0:  # the --init model, frozen (also on resume: the reference never moves)
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    if d.is_main:
        common.write_run_config(out, args, model.config, tokenizer, d)

    # ---------------------------------------------------------------- optimizer, resume
    optimizers = common.build_optimizers(model, args.optimizer, args.lr, args.weight_decay)
    prompts = PromptStream(task, d.rank)
    start = common.restore(checkpoint, model, optimizers, prompts, model.config) if checkpoint else 0
    train_model = common.wrap_model(model, args.compile, d, device)
    metrics = common.Metrics(out, resume_step=start if args.resume else None) if d.is_main else None

    # ---------------------------------------------------------------- loop
    autocast = common.autocast_context(device, args.precision_resolved)
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, disable=not d.is_main, desc="grpo")
    for step in bar:
        lr = common.set_lr(optimizers, common.lr_factor(step, args.warmup, args.steps, args.final_lr))
        record = grpo_step(args, d, device, model, train_model, reference, tokenizer, task, prompts, optimizers,
                           autocast)
        if record is None:
            bar.close()
            print(f"grpo: the loss or gradient became non-finite at step {step + 1}; stopping without that update. "
                  f"The last good checkpoint is in {out / common.CHECKPOINT_DIR}; lower --lr.", file=sys.stderr)
            return 1
        done = step + 1
        record = {"step": done, **record, "lr": lr}
        if common.due(done, args.eval_every, args.steps):
            with autocast:
                result = evaluate_task(model, tokenizer, task, args.eval_n, max_new_tokens=args.max_new_tokens)
            record.update(eval_accuracy=result["accuracy"], eval_format_rate=result["format_rate"])
        if d.is_main:
            metrics.log(record)
            bar.set_postfix(reward=f"{record['reward']:.2f}", acc=f"{record['accuracy']:.2f}",
                            **({"eval": f"{record['eval_accuracy']:.2f}"} if "eval_accuracy" in record else {}))
        if args.stop_after is not None and done >= args.stop_after:
            return 0  # as if killed: no checkpoint for this step
        if common.due(done, args.save_every, args.steps):
            if d.is_main:
                common.save_checkpoint(out, model, tokenizer, optimizers, done, prompts.state_dict(), vars(args))
            d.barrier()
    if d.is_main:
        metrics.close()
        report(args, out, device)
    return 0


def grpo_step(args, d, device, model, train_model, reference, tokenizer, task, prompts, optimizers, autocast):
    """Sample, score, and optimise one batch of rollouts. The step's record, or None when
    the loss or gradients went non-finite (no update was made)."""
    G = args.group_size
    items = prompts.next(args.prompts_per_step)
    with autocast:
        rollouts = complete(model, tokenizer, task, items, num_samples=G, max_new_tokens=args.max_new_tokens,
                            temperature=args.temperature, top_p=args.top_p)
    scored = [score_completion(task, items[i // G], text, len(tokens), args.max_new_tokens,
                               args.reward_weights_resolved)
              for i, (text, tokens) in enumerate(zip(rollouts.texts, rollouts.tokens))]
    rewards = torch.tensor([s.reward for s in scored])
    advantages = group_advantages(rewards, G, args.scale_rewards)
    batch = rollout_batch(rollouts, G, tokenizer.token_id(END), tokenizer.eot_id, args.mask_truncated)
    media = {k: v.repeat_interleave(G, 0) for k, v in prompt_batch(task, items, tokenizer, model.config)[1].items()}
    t0 = time.perf_counter()
    micro = list(range(0, len(scored), args.micro_batch))

    def forward(m, rows, grad: bool):
        ids = batch["input_ids"][rows].to(device)
        with torch.set_grad_enabled(grad), autocast:
            logits = m(ids, **{k: v[rows].to(device) for k, v in media.items()}, check_values=False)["logits"]
        return token_logprobs(logits[:, :-1], batch["labels"][rows, 1:].to(device), args.temperature)

    with torch.no_grad():
        ref_lp = [forward(reference, slice(s, s + args.micro_batch), False)[0] for s in micro] if reference else None
        old_lp = [forward(model, slice(s, s + args.micro_batch), False)[0] for s in micro] \
            if args.num_iterations > 1 else None
    mask = batch["mask"].to(device)
    total_tokens = mask.sum().clamp(min=1)
    stats = torch.zeros(4, device=device)  # kl, clipped, entropy (token sums), loss
    for _ in range(args.num_iterations):
        stats.zero_()
        for k, s in enumerate(micro):
            rows = slice(s, s + args.micro_batch)
            logprobs, entropy = forward(train_model, rows, True)
            old = old_lp[k] if old_lp else logprobs.detach()
            ref = ref_lp[k] if ref_lp else None
            m, A = mask[rows], advantages[rows].to(device)
            loss = grpo_loss(logprobs, old, A, m, ref, epsilon=args.epsilon, epsilon_high=args.epsilon_high,
                             beta=args.beta, loss_type=args.loss_type, max_completion_length=args.max_new_tokens)
            share = m.sum() / total_tokens if args.loss_type == "dapo" else m.shape[0] / mask.shape[0]
            defer_sync = d.world_size > 1 and k < len(micro) - 1
            with train_model.no_sync() if defer_sync else contextlib.nullcontext():
                (loss * share).backward()
            with torch.no_grad():
                kl = (k3_kl(logprobs, ref) * m).sum() if ref is not None else torch.zeros((), device=device)
                clipped = clip_fraction(logprobs, old, A, m, args.epsilon, args.epsilon_high) * m.sum()
                stats += torch.stack([kl, clipped, (entropy * m).sum(), loss.detach() * share])
        loss_value, grad_norm = common.optimizer_step(model, optimizers, stats[3], d)
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
            return None
    kl, clipped, entropy = (stats[:3] / total_tokens).tolist()
    groups = rewards.view(-1, G)
    trained = batch["input_ids"].numel()
    return {
        "loss": loss_value, "grad_norm": grad_norm,
        "reward": float(rewards.mean()), "reward_std": float(rewards.std()),
        "accuracy": sum(s.solved for s in scored) / len(scored),
        "format_rate": sum(s.format for s in scored) / len(scored),
        "kl": kl if reference is not None else None, "clip_ratio": clipped, "entropy": entropy,
        "completion_length": sum(len(t) for t in rollouts.tokens) / len(scored),
        "truncated_rate": sum(rollouts.truncated) / len(scored),
        "frac_zero_std_groups": float((groups.std(dim=1) == 0).float().mean()),
        "gen_tokens_per_s": rollouts.new_tokens / rollouts.seconds,
        "cache_mib": rollouts.cache_bytes / 2**20,
        "tokens": trained * args.num_iterations, "tokens_per_s": trained * args.num_iterations / (time.perf_counter() - t0),
    }


def rollout_batch(rollouts, group_size: int, end_id: int, pad_id: int, mask_truncated: bool) -> dict:
    """Right-padded [prompt + completion (+ <|end|> when it stopped)] rows; `labels` -100
    outside the completion; `mask` [N, L-1] is 1 on the completion tokens, aligned with
    token_logprobs(logits[:, :-1], labels[:, 1:]). A truncated completion keeps its mask
    unless mask_truncated."""
    rows = []
    for i, (tokens, cut) in enumerate(zip(rollouts.tokens, rollouts.truncated)):
        prompt = rollouts.prompt_ids[i // group_size]
        completion = tokens + ([] if cut else [end_id])
        rows.append((prompt, completion, cut))
    L = max(len(p) + len(c) for p, c, _ in rows)
    ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    for r, (prompt, completion, cut) in enumerate(rows):
        ids[r, : len(prompt) + len(completion)] = torch.tensor(prompt + completion)
        if not (cut and mask_truncated):
            labels[r, len(prompt) : len(prompt) + len(completion)] = torch.tensor(completion, dtype=torch.long)
    return {"input_ids": ids, "labels": labels, "mask": (labels[:, 1:] != -100).float()}


def report(args, out: Path, device: str) -> None:
    path = out / common.METRICS_NAME
    common.plot_losses(path, out / common.LOSS_PLOT_NAME)
    plot_rewards(path, out / REWARD_PLOT_NAME)
    common.write_summary(out, path, device)
    records = common.read_metrics(path)
    evals = [r for r in records if "eval_accuracy" in r]
    last = records[-1]
    line = f"grpo: {args.steps} steps, reward {last['reward']:.3f}, sampled accuracy {last['accuracy']:.3f}"
    if evals:
        line += f", held-out greedy accuracy {evals[0]['eval_accuracy']:.3f} (step {evals[0]['step']}) -> " \
                f"{evals[-1]['eval_accuracy']:.3f} (step {evals[-1]['step']})"
    print(line + f"; checkpoint {out / common.CHECKPOINT_DIR}")


def plot_rewards(metrics_path: Path, png: Path) -> None:
    """Mean reward and sampled accuracy per step, held-out greedy accuracy at evaluations."""
    common.plot_metrics(metrics_path, png, lines={"reward": "reward (mean)", "accuracy": "accuracy (sampled)"},
                        points={"eval_accuracy": "held-out accuracy (greedy)"},
                        title=f"GRPO: {metrics_path.parent.name}")
