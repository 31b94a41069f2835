import math

import pytest
import torch
from torch.testing import assert_close

from conftest import MIXER_VARIANTS, tiny_config
from quatrix.attention import MultiHeadAttention
from quatrix.blocks import QuatrixBlock, encoder_config, init_weights, make_mixer
from quatrix.qcompass import QCompass


@pytest.mark.parametrize("name, overrides", MIXER_VARIANTS)
def test_block_is_prenorm_mixer_then_ffn(name, overrides):
    block = QuatrixBlock(tiny_config(**overrides)).eval()
    x = torch.randn(2, 9, 32)
    h = x + block.mixer(block.norm1(x))
    expected = h + block.ffn[3](torch.nn.functional.gelu(block.ffn[0](block.norm2(h))))
    assert_close(block(x), expected)


def test_make_mixer_follows_the_config():
    assert isinstance(make_mixer(tiny_config()), QCompass)
    savo = make_mixer(tiny_config(q_value_content=True, q_heads=4))
    assert savo.q_value_content and savo.num_heads == 4 and hasattr(savo, "content_proj")
    assert not make_mixer(tiny_config(), causal=False).causal
    full, ranked = make_mixer(tiny_config(mixer="mha", q_heads=4)), make_mixer(tiny_config(mixer="mha_rank", q_heads=4))
    assert isinstance(full, MultiHeadAttention) and full.inner == 32 and ranked.inner == 16


def test_init_scales_the_residual_projections():
    torch.manual_seed(0)
    cfg = tiny_config(hidden_size=256, q_rank=64, num_layers=8)
    block = QuatrixBlock(cfg)
    init_weights(block, cfg.num_layers)
    assert block.mixer.state_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert block.mixer.out_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert block.ffn[3].weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert torch.all(block.norm1.weight == 1) and torch.all(block.mixer.out_proj.bias == 0)


def test_encoder_config_is_single_head_raw_x_qcompass():
    cfg = encoder_config(tiny_config(mixer="mha", q_heads=4), hidden_size=24, q_rank=8)
    assert (cfg.mixer, cfg.q_heads, cfg.q_value_content, cfg.hidden_size, cfg.q_rank) == ("qcompass", 1, False, 24, 8)
