"""Optimizers, the learning-rate schedule and the optimizer step every stage takes."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from quatrix.train.distributed import Dist


def build_optimizers(model: torch.nn.Module, name: str, lr: float, weight_decay: float) -> list[torch.optim.Optimizer]:
    """AdamW for everything; or, as the Quatrix paper trains, Muon (torch.optim.Muon) for the
    2-D weight matrices inside blocks and AdamW for embeddings, norms, biases and the rest.

    Weight decay applies to 2-D matrices only (not to embeddings, norms or biases)."""
    if name not in ("adamw", "muon"):
        raise ValueError(f"unknown optimizer {name!r}; choose adamw or muon")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    hidden = {n for n, p in params.items() if p.dim() == 2 and ".blocks." in f".{n}" and "emb" not in n}
    decay = {n for n, p in params.items() if p.dim() >= 2 and "emb" not in n}
    optimizers = []
    if name == "muon":
        optimizers.append(torch.optim.Muon([params[n] for n in sorted(hidden)], lr=lr, weight_decay=weight_decay,
                                           adjust_lr_fn="match_rms_adamw"))
        params = {n: p for n, p in params.items() if n not in hidden}
    groups = [
        {"params": [p for n, p in params.items() if n in decay], "weight_decay": weight_decay},
        {"params": [p for n, p in params.items() if n not in decay], "weight_decay": 0.0},
    ]
    optimizers.append(torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.95)))
    for opt in optimizers:
        for group in opt.param_groups:
            group["base_lr"] = lr
    return optimizers


def lr_factor(step: int, warmup: int, total: int, final: float = 0.1) -> float:
    """Linear warmup over `warmup` steps, then cosine decay to `final` of the peak at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(optimizers: list[torch.optim.Optimizer], factor: float) -> float:
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * factor
    return optimizers[-1].param_groups[0]["lr"]


def optimizer_step(model: torch.nn.Module, optimizers, loss: Tensor, d: Dist) -> tuple[float, float]:
    """Clip the gradient norm at 1.0 and step, unless the loss or the gradients are not
    finite. Returns (mean loss over ranks, gradient norm): the step's one host sync."""
    grad_norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], 1.0)
    loss_value, norm_value = torch.stack([d.mean(loss.float()), grad_norm.float().to(loss.device)]).tolist()
    if math.isfinite(loss_value) and math.isfinite(norm_value):
        for opt in optimizers:
            opt.step()
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    return loss_value, norm_value
