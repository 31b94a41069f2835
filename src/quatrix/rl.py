"""The mathematics of GRPO: group-relative advantages, the clipped surrogate loss with an
optional k3 KL penalty, and per-token log-probabilities (docs/design.md §6 says where this
departs from the DeepSeek-R1 paper and from common implementations)."""

from __future__ import annotations

import torch
from torch import Tensor

SCALES = ("group", "batch", "none")
LOSS_TYPES = ("grpo", "dapo", "dr_grpo")
STD_EPS = 1e-4


def group_advantages(rewards: Tensor, group_size: int, scale: str = "group") -> Tensor:
    """rewards [P*G], laid out group by group (each run of G consecutive entries answers one
    prompt) -> advantages [P*G]: reward minus its group's mean, divided by (group std + 1e-4)
    for scale="group", by (batch std + 1e-4) for "batch", undivided for "none". Standard
    deviations are torch.std's, Bessel-corrected."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [P*G], got shape {tuple(rewards.shape)}")
    if not isinstance(group_size, int) or group_size < 2:
        raise ValueError(f"group_size must be an int >= 2 (a group of one has no baseline), got {group_size!r}")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    groups = rewards.view(-1, group_size)  # [P, G]
    advantages = (groups - groups.mean(dim=1, keepdim=True)).view(-1)
    if scale == "group":
        advantages = advantages / (groups.std(dim=1, keepdim=True) + STD_EPS).expand_as(groups).reshape(-1)
    elif scale == "batch":
        advantages = advantages / (rewards.std() + STD_EPS)
    return advantages


def grpo_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor,
              ref_logprobs: Tensor | None = None, *, epsilon: float = 0.2, epsilon_high: float | None = None,
              beta: float = 0.0, loss_type: str = "dapo", max_completion_length: int | None = None) -> Tensor:
    """The clipped surrogate over completion tokens, a scalar to minimise.

    logprobs, old_logprobs, ref_logprobs, mask: [N, T] (mask 1 on completion tokens);
    advantages: [N]. Per token, ratio = exp(logprobs - old_logprobs) and
    objective = min(ratio * A, clamp(ratio, 1 - epsilon, 1 + epsilon_high) * A);
    loss = -objective + beta * kl, kl = exp(ref - logprobs) - (ref - logprobs) - 1 (k3).
    Reduction: "grpo" mean over each sequence's tokens, then over sequences; "dapo" sum
    over all tokens / their count; "dr_grpo" sum / (N * max_completion_length), which
    defaults to T."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {loss_type!r}")
    if logprobs.dim() != 2 or old_logprobs.shape != logprobs.shape or mask.shape != logprobs.shape:
        raise ValueError(f"logprobs, old_logprobs and mask must share one [N, T] shape, got "
                         f"{tuple(logprobs.shape)}, {tuple(old_logprobs.shape)}, {tuple(mask.shape)}")
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(f"advantages must be [N] = [{logprobs.shape[0]}], got {tuple(advantages.shape)}")
    if beta != 0 and (ref_logprobs is None or ref_logprobs.shape != logprobs.shape):
        raise ValueError("beta != 0 needs ref_logprobs of the same [N, T] shape as logprobs")
    high = epsilon if epsilon_high is None else epsilon_high
    mask = mask.to(logprobs.dtype)
    ratio = torch.exp(logprobs - old_logprobs)
    A = advantages[:, None].to(logprobs.dtype)
    per_token = -torch.minimum(ratio * A, torch.clamp(ratio, 1 - epsilon, 1 + high) * A)
    if beta != 0:
        per_token = per_token + beta * k3_kl(logprobs, ref_logprobs)
    per_token = per_token * mask
    if loss_type == "grpo":
        return (per_token.sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    if loss_type == "dapo":
        return per_token.sum() / mask.sum().clamp(min=1)
    length = logprobs.shape[1] if max_completion_length is None else max_completion_length
    return per_token.sum() / (logprobs.shape[0] * length)


def k3_kl(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(policy || reference): exp(d) - d - 1, d = ref - policy."""
    d = ref_logprobs - logprobs
    return torch.exp(d) - d - 1


def clip_fraction(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, epsilon: float,
                  epsilon_high: float | None = None) -> Tensor:
    """Share of completion tokens whose clipped term is the active one (no gradient flows)."""
    high = epsilon if epsilon_high is None else epsilon_high
    ratio = torch.exp(logprobs - old_logprobs)
    A = advantages[:, None]
    clipped = ((ratio < 1 - epsilon) & (A < 0)) | ((ratio > 1 + high) & (A > 0))
    return (clipped.float() * mask).sum() / mask.sum().clamp(min=1)


