"""The language-model loss, computed from the final hidden states without ever holding the
whole [B, L, V] logits (docs/design.md §2, "Chunked cross-entropy").

At Berry-Q0's size the logits of one 8 × 1,024 micro-batch are 8,192 × 50,257 floats:
1.6 GB in fp32, and as much again for their gradient — more than the rest of the step. The
loss only needs each position's log-sum-exp and its target's logit, so `head_loss`
computes the head's matmul over chunks of positions, keeps one fp32 log-sum-exp per
position, and recomputes each chunk's logits in backward (the idea behind fused linear
cross-entropy kernels such as Liger's). Written by hand because the head, its temperature
and GRPO's entropy are ours; the arithmetic is the textbook softmax gradient.

Where the logits fit in one chunk (the CPU-scale recipes), the plain path runs instead,
with exactly the operations it always ran: the numbers of small runs do not change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

CHUNK_BYTES = 64 * 2**20  # fp32 logits per chunk; a chunk holds about three such buffers at once
IGNORE = -100


def chunk_limit() -> int:
    """CHUNK_BYTES as it is now (read at call time, so a test or a caller may change it)."""
    return CHUNK_BYTES


def next_token_loss(logits: Tensor, labels: Tensor, reduction: str = "mean") -> Tensor:
    """Cross-entropy of logits[:, t] against labels[:, t + 1], ignore_index=-100, in fp32.

    reduction="none" returns [B, L-1] per-token losses (0 at ignored positions). The targets
    are shifted rather than the logits: slicing [B, L, V] logits would cost a copy of them
    in backward.
    """
    B, L, V = logits.shape
    targets = torch.cat([labels[:, 1:], labels.new_full((B, 1), IGNORE)], dim=1)  # [B, L]
    per_token = F.cross_entropy(
        logits.float().reshape(-1, V), targets.reshape(-1), ignore_index=IGNORE, reduction="none"
    ).view(B, L)[:, :-1]  # [B, L-1]
    return reduce(per_token, targets, reduction)


def token_logprobs(logits: Tensor, targets: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """Log-probabilities of `targets` [B, T] under `logits` [B, T, V] / temperature (the
    sampling distribution), and the entropy of that distribution per position, in fp32.
    Targets of -100 (ignored) get log-probability 0."""
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    picked = logp.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1) * (targets != IGNORE)
    with torch.no_grad():
        entropy = -(logp.exp() * logp).sum(-1)
    return picked, entropy


def logits_loss(logits: Tensor, labels: Tensor, reduction: str = "mean",
                temperature: float | None = None) -> dict[str, Tensor]:
    """`head_loss` from whole logits [B, L, V]: the plain path, and the one for callers that
    asked for the logits anyway."""
    if temperature is None:
        return {"loss": next_token_loss(logits, labels, reduction)}
    if reduction != "none":
        raise ValueError("a loss temperature needs loss_reduction='none'")
    picked, entropy = token_logprobs(logits[:, :-1], labels[:, 1:], temperature)
    return {"loss": -picked, "entropy": entropy}


def reduce(per_token: Tensor, targets: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return per_token
    if reduction == "sum":
        return per_token.sum()
    return per_token.sum() / (targets != IGNORE).sum().clamp(min=1)


def chunk_rows(vocab_size: int, chunk_bytes: int | None = None) -> int:
    """Positions per chunk: as many as keep one chunk's fp32 logits within `chunk_bytes`
    (default CHUNK_BYTES)."""
    return max(1, (CHUNK_BYTES if chunk_bytes is None else chunk_bytes) // (4 * vocab_size))


def head_loss(hidden: Tensor, weight: Tensor, labels: Tensor, reduction: str = "mean",
              temperature: float | None = None, chunk_bytes: int | None = None) -> dict[str, Tensor]:
    """The next-token loss of a head `weight` [V, H] (no bias) over `hidden` [B, L, H].

    Returns {"loss": as `next_token_loss`}; with a `temperature` (reduction "none" only),
    the loss is -log p_T of each target and {"entropy": [B, L-1]} (no gradient) is added:
    what GRPO needs. Logits are never whole when B·L positions need more than one chunk.
    """
    B, L, H = hidden.shape
    V = weight.shape[0]
    if temperature is not None and reduction != "none":
        raise ValueError("a loss temperature needs loss_reduction='none'")
    if B * (L - 1) <= chunk_rows(V, chunk_bytes):  # one chunk: the plain path, bit for bit
        return logits_loss(F.linear(hidden, weight), labels, reduction, temperature)
    dtype = _compute_dtype(hidden)
    targets = labels[:, 1:]  # [B, L-1]
    rows = hidden[:, :-1].reshape(-1, H).to(dtype)  # [N, H], N = B(L-1)
    with torch.autocast(hidden.device.type, enabled=False):
        nll, entropy = _ChunkedCrossEntropy.apply(rows, weight, targets.reshape(-1),
                                                  1.0 if temperature is None else float(temperature),
                                                  chunk_rows(V, chunk_bytes), temperature is not None)
    out = {"loss": reduce(nll.view(B, L - 1), targets, reduction)}
    if temperature is not None:
        out["entropy"] = entropy.view(B, L - 1)
    return out


def _compute_dtype(hidden: Tensor) -> torch.dtype:
    """The dtype the head's matmul runs in: autocast's, where autocast is on."""
    kind = hidden.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return hidden.dtype


def _logits(rows: Tensor, weight: Tensor, temperature: float) -> Tensor:
    """fp32 logits of a chunk, divided in place: one fp32 buffer per chunk."""
    z = rows @ weight.T
    z = z.float() if z.dtype != torch.float32 else z
    return z.div_(temperature) if temperature != 1.0 else z


class _ChunkedCrossEntropy(torch.autograd.Function):
    """-log softmax(h Wᵀ / T)[target] per row, chunk by chunk; backward recomputes each
    chunk's logits from the saved rows and per-row log-sum-exp. Rows whose target is -100
    give 0 and no gradient. The entropy output carries no gradient. The head's weight comes
    in its own dtype and is cast to the rows' dtype where used, so its gradient is summed
    over chunks in fp32 and handed back without a cast."""

    @staticmethod
    def forward(ctx, rows: Tensor, weight: Tensor, targets: Tensor, temperature: float, chunk: int,
                want_entropy: bool):
        N = rows.shape[0]
        weight_in = weight
        weight = weight.to(rows.dtype)
        nll = torch.empty(N, device=rows.device, dtype=torch.float32)
        lse = torch.empty_like(nll)
        entropy = torch.zeros_like(nll)
        valid = targets != IGNORE
        safe = targets.clamp(min=0)
        for s in range(0, N, chunk):
            z = _logits(rows[s : s + chunk], weight, temperature)  # [n, V] fp32
            lse[s : s + chunk] = torch.logsumexp(z, dim=-1)
            nll[s : s + chunk] = lse[s : s + chunk] - z.gather(1, safe[s : s + chunk, None]).squeeze(1)
            if want_entropy:
                logp = z - lse[s : s + chunk, None]
                entropy[s : s + chunk] = -(logp.exp() * logp).sum(-1)
        nll = nll * valid
        ctx.save_for_backward(rows, weight_in, safe, valid, lse)
        ctx.temperature, ctx.chunk = temperature, chunk
        ctx.mark_non_differentiable(entropy)
        return nll, entropy

    @staticmethod
    def backward(ctx, grad_nll: Tensor, _grad_entropy: Tensor):
        rows, weight_in, safe, valid, lse = ctx.saved_tensors
        weight = weight_in.to(rows.dtype)
        T, chunk = ctx.temperature, ctx.chunk
        scale = (grad_nll.float() * valid / T)[:, None]  # [N, 1]
        grad_rows = torch.empty_like(rows) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) \
            if ctx.needs_input_grad[1] else None
        for s in range(0, rows.shape[0], chunk):
            h = rows[s : s + chunk]
            dz = _logits(h, weight, T).sub_(lse[s : s + chunk, None]).exp_()  # softmax, in place
            dz.scatter_add_(1, safe[s : s + chunk, None], dz.new_full((h.shape[0], 1), -1.0))
            dz = dz.mul_(scale[s : s + chunk]).to(rows.dtype)  # [n, V]
            if grad_rows is not None:
                grad_rows[s : s + chunk] = dz @ weight
            if grad_weight is not None:
                grad_weight += dz.T @ h  # summed in fp32 whatever the matmul's dtype
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight_in.dtype)
        return grad_rows, grad_weight, None, None, None, None
