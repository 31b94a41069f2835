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
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from quatrix.chat import END
from quatrix.data.sft import SFTLoader
from quatrix.eval.tasks import evaluate_task
from quatrix.rl import LOSS_TYPES, SCALES, clip_fraction, group_advantages, grpo_loss, k3_kl
from quatrix.tasks import task_from_spec
from quatrix.tasks.rewards import parse_reward_weights, score_completion
from quatrix.tasks.sampling import complete
from quatrix.train.metrics import plot_metrics, read_metrics
from quatrix.train.optim import optimizer_step
from quatrix.train import options
from quatrix.train.options import RunConfig, default, option
from quatrix.train.trainer import Trainer, load_init
from quatrix.validation import float_in, int_at_least, nonnegative_float, positive_float, positive_int

REWARD_PLOT_NAME = "reward.png"


@dataclass
class GRPOConfig(RunConfig):
    init: str | None = option(required=True, help="checkpoint to start from (with its tokenizer), e.g. an SFT "
                                                  "run's")
    task: str | None = option(required=True, help="NAME[:key=value,...]: any reasoning-gym task, visual_qa or "
                                                  "transcribe")
    prompts_per_step: int = option(8, parse=positive_int, help="P: prompts per step per process")
    group_size: int = option(8, parse=int_at_least(2), help="G: completions per prompt")
    micro_batch: int = option(16, parse=positive_int, help="completions per forward/backward pass")
    beta: float = option(0.0, parse=nonnegative_float, help="KL penalty weight (0: no reference model)")
    epsilon: float = option(0.2, parse=float_in(0.0, 1.0, low_open=True, high_open=True))
    epsilon_high: float | None = option(None, parse=positive_float, help="upper clip (default: --epsilon)")
    loss_type: str = option("dapo", choices=LOSS_TYPES)
    scale_rewards: str = option("group", choices=SCALES)
    num_iterations: int = option(1, parse=positive_int, help="μ: optimisation passes over each batch of rollouts")
    max_new_tokens: int = option(32, parse=positive_int)
    temperature: float = option(1.0, parse=positive_float)
    top_p: float = option(1.0, parse=float_in(0.0, 1.0, low_open=True))
    mask_truncated: bool = option(False, help="no loss on completions that ran out of tokens before ending (DAPO's "
                                              "overlong filter)")
    reward_weights: str = option("correct=1,format=0.1,length=0",
                                 help="weights of the rewards correct, format and length")
    eval_n: int = option(100, parse=positive_int, help="held-out items for greedy evaluation")
    steps: int = default("steps", 100)
    lr: float = default("lr", 2e-5)
    weight_decay: float = default("weight_decay", 0.0)
    eval_every: int = default("eval_every", 20)
    save_every: int = default("save_every", 20)
    out: str = default("out", "runs/grpo")
    # resolved from reward_weights when the config is made, never a flag
    rewards: dict[str, float] = option(cli=False, default_factory=dict)

    def __post_init__(self):
        self.rewards = parse_reward_weights(self.reward_weights)


class PromptStream:
    """The task's training items in order, from this process's own index range; the position is plain data."""

    def __init__(self, task, rank: int = 0):
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


class GRPOTrainer(Trainer):
    stage = "grpo"

    def setup(self) -> None:
        config = self.config
        self.model, self.tokenizer = load_init(config.init, self.device)
        self.task = task_from_spec(config.task, config.seed, self.model.config)
        self.sources = set(self.task.media)
        self.reference = None
        if config.beta > 0:  # the --init model, frozen (also on resume: the reference never moves)
            self.reference = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.loader = PromptStream(self.task, self.d.rank)

    def find_unused_parameters(self) -> bool:
        return False

    def train_step(self, step: int) -> dict:
        """Sample, score, and optimise one batch of rollouts."""
        return grpo_step(self.config, self.d, self.device, self.model, self.train_model, self.reference,
                         self.tokenizer, self.task, self.loader, self.optimizers, self.autocast())

    def evaluate(self) -> dict:
        result = evaluate_task(self.model, self.tokenizer, self.task, self.config.eval_n,
                               max_new_tokens=self.config.max_new_tokens, at_most=not self.config.given("eval_n"))
        return {"eval_accuracy": result["accuracy"], "eval_format_rate": result["format_rate"]}

    def report(self) -> None:
        path = self.metrics_path
        super().report()
        plot_rewards(path, self.out / REWARD_PLOT_NAME)
        records = read_metrics(path)
        evals = [r for r in records if "eval_accuracy" in r]
        last = records[-1]
        line = f"grpo: {self.config.steps} steps, reward {last['reward']:.3f}, sampled accuracy {last['accuracy']:.3f}"
        if evals:
            line += f", held-out greedy accuracy {evals[0]['eval_accuracy']:.3f} (step {evals[0]['step']}) -> " \
                    f"{evals[-1]['eval_accuracy']:.3f} (step {evals[-1]['step']})"
        print(line + f"; checkpoint {self.out / 'checkpoint'}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.add_arguments(p, GRPOConfig)


def main(args: argparse.Namespace) -> int:
    return GRPOTrainer(options.from_namespace(GRPOConfig, args)).run()


def grpo_step(args: GRPOConfig, d, device, model, train_model, reference, tokenizer, task, prompts, optimizers,
              autocast) -> dict:
    """Sample, score, and optimise one batch of rollouts. The step's record, or
    {"problem": ...} when the loss or gradients went non-finite (no update was made)."""
    G = args.group_size
    items = prompts.next(args.prompts_per_step)
    with autocast:
        rollouts = complete(model, tokenizer, task, items, num_samples=G, max_new_tokens=args.max_new_tokens,
                            temperature=args.temperature, top_p=args.top_p)
    scored = [score_completion(task, items[i // G], text, len(tokens), args.max_new_tokens, args.rewards)
              for i, (text, tokens) in enumerate(zip(rollouts.texts, rollouts.tokens))]
    rewards = torch.tensor([s.reward for s in scored])
    advantages = group_advantages(rewards, G, args.scale_rewards)
    batch = rollout_batch(rollouts, G, tokenizer.token_id(END), tokenizer.eot_id, args.mask_truncated)
    media = {k: v.repeat_interleave(G, 0) for k, v in rollouts.media.items()}
    t0 = time.perf_counter()
    micro = list(range(0, len(scored), args.micro_batch))

    def forward(m, rows, grad: bool):
        ids, labels = batch["input_ids"][rows].to(device), batch["labels"][rows].to(device)
        with torch.set_grad_enabled(grad), autocast:  # the model's chunked loss: no whole logits
            out = m(ids, labels=labels, loss_reduction="none", temperature=args.temperature,
                    **{k: v[rows].to(device) for k, v in media.items()}, check_values=False)
        return -out["loss"], out["entropy"]

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
        loss_value, grad_norm = optimizer_step(model, optimizers, stats[3], d)
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
            return {"problem": "the loss or gradient became non-finite"}
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
    the per-token loss the model returns for `labels` (positions 1..L-1). A truncated completion keeps its mask
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


def plot_rewards(metrics_path: Path, png: Path) -> None:
    """Mean reward and sampled accuracy per step, held-out greedy accuracy at evaluations."""
    plot_metrics(metrics_path, png, lines={"reward": "reward (mean)", "accuracy": "accuracy (sampled)"},
                        points={"eval_accuracy": "held-out accuracy (greedy)"},
                        title=f"GRPO: {metrics_path.parent.name}")
