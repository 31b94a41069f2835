import pytest
import torch

from quatrix import QuatrixConfig
from quatrix.variants import VARIANTS

# Every model variant of the registry: (name, config overrides), multi-head ones with 4 heads.
MIXER_VARIANTS = [(name, variant.overrides(4)) for name, variant in VARIANTS.items()]


def tiny_config(**overrides) -> QuatrixConfig:
    base = dict(vocab_size=97, hidden_size=32, num_layers=2, max_seq_len=64, q_rank=16,
                image_size=32, patch_size=8, vision_hidden_size=24, vision_q_rank=8, vision_layers=1,
                audio_hidden_size=24, audio_q_rank=8, audio_layers=1, audio_max_seconds=1.0,
                world_image_size=16, world_patch_size=4, world_hidden_size=24, world_q_rank=8, world_layers=1)
    return QuatrixConfig(**{**base, **overrides})


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
