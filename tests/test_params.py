import pytest
import torch

from conftest import tiny_config
from quatrix import QuatrixLM, count_parameters, parameter_table, preset


def test_berry_q0_breakdown():
    counts = count_parameters(QuatrixLM(preset("berry-q0")))
    assert counts["mixer_weights_per_layer"] == 327_680  # 2*512*64 + 512*512
    assert 44e6 <= counts["language_model"] <= 46e6
    assert 4.5e6 <= counts["vision"] + counts["projection"] <= 5.5e6
    assert 49.5e6 <= counts["total"] <= 50.5e6
    # embeddings counted once although the head is tied: 50257*512 + 5120*512
    assert counts["embeddings"] == 50257 * 512 + 5120 * 512
    assert counts["mixers"] == 7 * (327_680 + 512)


def test_mha_baseline_mixer_is_one_million_per_layer():
    counts = count_parameters(QuatrixLM(preset("berry-q0", mixer="mha", q_heads=8)))
    assert counts["mixer_weights_per_layer"] == 1_048_576
    ranked = count_parameters(QuatrixLM(preset("berry-q0", mixer="mha_rank", q_heads=8)))
    assert ranked["mixer_weights_per_layer"] == 4 * 512 * 64


@pytest.mark.parametrize("plugins", [dict(use_vision=True), dict(use_audio=True), dict(use_world_model=True)])
def test_components_add_up_to_every_unique_parameter(plugins):
    model = QuatrixLM(tiny_config(**plugins))
    counts = count_parameters(model)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["other"] == 0
    assert counts["language_model"] + counts["vision"] + counts["audio"] + counts["projection"] + counts[
        "world"] == counts["total"]


def test_table_lists_components():
    text = parameter_table(count_parameters(QuatrixLM(tiny_config(use_vision=True))))
    for word in ("embeddings", "mixers", "ffns", "vision", "projection", "total", "mixer weight matrices"):
        assert word in text


@pytest.mark.parametrize("mixer, heads, pair", [("qcompass", 1, 32 + 128), ("mha", 4, 2 * 128), ("mha_rank", 4, 2 * 32)])
def test_training_flops_count_every_projection_weight_six_times(mixer, heads, pair):
    from quatrix.params import training_flops_per_token

    cfg = preset("tiny", mixer=mixer, q_heads=heads)  # H=128, r=32, 4 layers
    model = QuatrixLM(cfg)
    weights = sum(m.weight.numel() for n, m in model.named_modules()
                  if isinstance(m, torch.nn.Linear) and (n.startswith("blocks.") or n == "head"))
    L = 64
    assert training_flops_per_token(cfg, L) == 6 * weights + 3 * 2 * cfg.num_layers * pair * L / 2
