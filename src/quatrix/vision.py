"""QuatrixVision: a patch image encoder made of the same Q-Compass blocks, bidirectional.

224x224 image -> 16x16 Conv2d patches (196 tokens) -> learned positions -> Q-Compass-Bi
blocks (H=384, r=32) -> LayerNorm -> linear projection to the LM width. Its parameter
names (patch_embed, pos_emb, blocks.N.*, norm, proj) follow the original package.
"""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from quatrix.blocks import QuatrixBlock, encoder_config, init_weights
from quatrix.config import QuatrixConfig
from quatrix.validation import check_image


class QuatrixVision(nn.Module):
    def __init__(self, config: QuatrixConfig):
        super().__init__()
        c = config
        Hv = c.vision_hidden_size
        self.image_size, self.channels = c.image_size, c.image_channels
        self.patch_embed = nn.Conv2d(c.image_channels, Hv, c.patch_size, stride=c.patch_size, bias=False)
        self.pos_emb = nn.Embedding(c.num_image_tokens, Hv)
        self.drop = nn.Dropout(c.dropout)
        block_cfg = encoder_config(c, Hv, c.vision_q_rank)
        self.blocks = nn.ModuleList(QuatrixBlock(block_cfg, causal=False) for _ in range(c.vision_layers))
        self.norm = nn.LayerNorm(Hv)
        self.proj = nn.Linear(Hv, c.hidden_size, bias=False)  # to the LM width
        init_weights(self, c.vision_layers)

    def forward(self, pixel_values: Tensor, check_values: bool = True) -> Tensor:
        """pixel_values: [B, C, S, S] (normalised floats) -> image tokens [B, (S/p)^2, H].
        check_values=False skips the finiteness check (a host sync) for checked inputs."""
        check_image("pixel_values", pixel_values, self.channels, self.image_size, values=check_values)
        x = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype))  # [B, Hv, S/p, S/p]
        x = x.flatten(2).transpose(1, 2)  # [B, N, Hv]
        x = self.drop(x + self.pos_emb.weight)
        for block in self.blocks:
            x = block(x)
        return self.proj(self.norm(x))  # [B, N, H]


VisionEncoder = QuatrixVision  # the original package's name
