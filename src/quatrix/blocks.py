"""The block shared by every Quatrix model: pre-norm mixer + GELU FFN, and its init."""

from __future__ import annotations

import math

import torch.nn as nn
from torch import Tensor

from quatrix.attention import MultiHeadAttention
from quatrix.cache import MixerCache
from quatrix.config import QuatrixConfig
from quatrix.qcompass import QCompass


def make_mixer(cfg: QuatrixConfig, causal: bool = True) -> nn.Module:
    """The sequence mixer `cfg.mixer` selects; everything around it is shared."""
    if cfg.mixer == "qcompass":
        return QCompass(cfg.hidden_size, cfg.q_rank, cfg.q_heads, cfg.q_value_content, cfg.dropout, causal)
    rank = None if cfg.mixer == "mha" else cfg.q_rank
    return MultiHeadAttention(cfg.hidden_size, cfg.q_heads, rank, cfg.dropout, causal)


class QuatrixBlock(nn.Module):
    """Pre-norm residual block: x + mixer(LN(x)), then x + FFN_GELU(LN(x)).

    The sequence mixer is always `block.mixer`, whatever its type. `ffn` keeps the
    original package's layout (Linear, GELU, Dropout, Linear, Dropout) so its keys map 1:1.
    With ffn_ratio=0 it is the identity, as in Zoology's recall studies, whose blocks then
    add the normed stream itself: x + LN(x).
    """

    def __init__(self, cfg: QuatrixConfig, causal: bool = True):
        super().__init__()
        H = cfg.hidden_size
        self.norm1 = nn.LayerNorm(H)
        self.mixer = make_mixer(cfg, causal)
        self.norm2 = nn.LayerNorm(H)
        self.ffn = nn.Identity() if cfg.ffn_ratio == 0 else nn.Sequential(
            nn.Linear(H, cfg.ffn_ratio * H), nn.GELU(), nn.Dropout(cfg.dropout),
            nn.Linear(cfg.ffn_ratio * H, H), nn.Dropout(cfg.dropout),
        )

    def forward(self, x: Tensor, mask: Tensor | None = None, cache: MixerCache | None = None) -> Tensor:
        x = x + self.mixer(self.norm1(x), mask, cache=cache)
        return x + self.ffn(self.norm2(x))


def encoder_config(cfg: QuatrixConfig, hidden_size: int, q_rank: int) -> QuatrixConfig:
    """Block config for an encoder (vision, audio, world): single-head raw-x Q-Compass-Bi."""
    return cfg.replace(hidden_size=hidden_size, q_rank=q_rank, q_heads=1, q_value_content=False, mixer="qcompass")


def init_weights(module: nn.Module, num_layers: int) -> None:
    """GPT-2 style: N(0, 0.02) weights, zero biases, unit LayerNorms; the projections that
    write into the residual stream (mixer out_proj, FFN output) scaled by 1/sqrt(2N)."""
    for name, m in module.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.Embedding)):
            std = 0.02 / math.sqrt(2 * num_layers) if name.endswith(("out_proj", "ffn.3")) else 0.02
            nn.init.normal_(m.weight, std=std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
