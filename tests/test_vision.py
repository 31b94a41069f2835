import pytest
import torch

from conftest import tiny_config
from quatrix import QuatrixVision, VisionEncoder


def test_shapes_and_alias():
    assert VisionEncoder is QuatrixVision
    enc = QuatrixVision(tiny_config())
    assert enc(torch.randn(2, 3, 32, 32)).shape == (2, 16, 32)  # (32/8)^2 patches, LM width
    assert {type(b.mixer).__name__ for b in enc.blocks} == {"QCompass"} and not enc.blocks[0].mixer.causal


def test_default_sizes():
    enc = QuatrixVision(tiny_config(image_size=224, patch_size=16, vision_hidden_size=384, vision_q_rank=32,
                                    vision_layers=3, hidden_size=512, q_rank=64))
    assert enc.pos_emb.weight.shape == (196, 384) and enc.proj.weight.shape == (512, 384)
    assert enc.blocks[0].mixer.state_proj.weight.shape == (32, 384) and len(enc.blocks) == 3


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.randn(3, 32, 32), "must be 4-D"),
        (torch.randn(1, 1, 32, 32), "has 1 channels, expected 3"),
        (torch.randn(1, 3, 64, 64), "is 64x64 pixels, expected 32x32"),
        (torch.randint(0, 255, (1, 3, 32, 32)), "floating-point"),
        (torch.full((1, 3, 32, 32), float("nan")), "NaN or infinite"),
        ([[1.0]], "must be a torch.Tensor"),
    ],
)
def test_bad_images(images, message):
    with pytest.raises(ValueError, match=message):
        QuatrixVision(tiny_config())(images)
