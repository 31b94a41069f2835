"""Honest parameter accounting: where every parameter of a Quatrix model sits.

Tied weights are counted once (the output head shares the token embedding).
"""

from __future__ import annotations

import torch.nn as nn

COMPONENTS = ("embeddings", "mixers", "ffns", "norms", "vision", "audio", "projection", "world", "other")
LANGUAGE_MODEL = ("embeddings", "mixers", "ffns", "norms")


def component_of(name: str) -> str:
    """Which component a parameter name belongs to."""
    top = name.split(".", 1)[0]
    if top in ("vision", "audio"):
        return "projection" if name.startswith(f"{top}.proj.") else top
    if top == "world":
        return "world"
    if top in ("token_emb", "pos_emb", "head"):
        return "embeddings"
    if ".mixer." in name or name.startswith("mixer."):
        return "mixers"
    if ".ffn." in name or name.startswith("ffn."):
        return "ffns"
    if "norm" in name:
        return "norms"
    return "other"


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Per-component parameter counts, plus `language_model`, `total` and, for models with
    blocks, `mixer_weights_per_layer`: the weight matrices of one LM mixer (biases excluded),
    327,680 for Q-Compass at H=512, r=64 against 1,048,576 for full-rank attention."""
    counts = dict.fromkeys(COMPONENTS, 0)
    seen: set[int] = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            continue
        seen.add(id(param))
        counts[component_of(name)] += param.numel()
    counts["language_model"] = sum(counts[k] for k in LANGUAGE_MODEL)
    counts["total"] = sum(counts[k] for k in COMPONENTS)
    blocks = getattr(model, "blocks", None)
    if blocks is not None and len(blocks) and hasattr(blocks[0], "mixer"):
        counts["mixer_weights_per_layer"] = mixer_weight_matrices(blocks[0].mixer)
    return counts


def mixer_weight_matrices(mixer: nn.Module) -> int:
    """Parameters in a mixer's projection weight matrices (W_s, W_a, W_o [, W_c]; or q, k, v, o)."""
    return sum(m.weight.numel() for m in mixer.modules() if isinstance(m, nn.Linear))


def parameter_table(counts: dict[str, int]) -> str:
    """A fixed-width table of `count_parameters` output (zero rows dropped)."""
    total = counts["total"] or 1
    rows = [(k, counts[k]) for k in COMPONENTS if counts.get(k)]
    rows += [("language model", counts["language_model"]), ("total", counts["total"])]
    lines = [f"{'component':<16}{'parameters':>14}{'share':>9}", "-" * 39]
    for i, (name, n) in enumerate(rows):
        if i == len(rows) - 2:
            lines.append("-" * 39)
        lines.append(f"{name:<16}{n:>14,}{100 * n / total:>8.1f}%")
    if "mixer_weights_per_layer" in counts:
        lines.append(f"mixer weight matrices per layer: {counts['mixer_weights_per_layer']:,}")
    return "\n".join(lines)


def mixer_forward_flops_per_token(config, seq_len: int) -> float:
    """Analytic forward matmul FLOPs of one mixer layer per token of a causal sequence of
    `seq_len`: 2 per weight of its projections, plus the [L, L] routing and gather terms,
    which the causal mask halves on average (a query routes over seq_len / 2 keys)."""
    H, r = config.hidden_size, config.q_rank
    if config.mixer == "mha":
        proj, pair = 4 * H * H, 2 * H
    elif config.mixer == "mha_rank":
        proj, pair = 4 * H * r, 2 * r
    elif config.q_value_content:  # folded W_o W_c (r x H per head) after a rank-r gather per head
        proj, pair = 2 * H * r + config.q_heads * r * H, r + config.q_heads * r
    else:
        proj, pair = 2 * H * r + H * H, r + H
    return 2 * proj + 2 * pair * seq_len / 2


def training_flops_per_token(config, seq_len: int) -> float:
    """Analytic matmul FLOPs to train the language model on one token of a causal sequence of
    `seq_len` (forward + backward = 3x forward): every mixer (`mixer_forward_flops_per_token`),
    6 per weight of every FFN and of the output head. Embedding lookups, norms and softmax
    are not counted (as is usual for MFU)."""
    H, V, N = config.hidden_size, config.vocab_size, config.num_layers
    ffn = 2 * H * config.ffn_ratio * H
    forward = N * (mixer_forward_flops_per_token(config, seq_len) + 2 * ffn) + 2 * H * V
    return 3.0 * forward
