import json

import pytest

from quatrix import PRESETS, QuatrixConfig, preset


def test_defaults_match_published_quick_start():
    c = QuatrixConfig()
    assert (c.vocab_size, c.hidden_size, c.num_layers, c.max_seq_len, c.q_rank) == (50257, 512, 7, 5120, 64)
    assert (c.ffn_ratio, c.q_heads, c.mixer, c.tie_embeddings) == (4, 1, "qcompass", True)
    assert not (c.use_vision or c.use_audio or c.use_world_model or c.q_value_content)


def test_json_round_trip(tmp_path):
    c = QuatrixConfig(hidden_size=256, q_rank=32, q_heads=4, mixer="mha_rank", use_vision=True)
    assert QuatrixConfig.from_json(c.to_json()) == c
    assert QuatrixConfig.from_dict(c.to_dict()) == c
    c.to_json(tmp_path / "config.json")
    assert QuatrixConfig.from_json(tmp_path / "config.json") == c
    assert json.loads((tmp_path / "config.json").read_text())["mixer"] == "mha_rank"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build(name):
    assert preset(name).to_dict() == QuatrixConfig(**PRESETS[name]).to_dict()


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(q_rank=60, q_heads=8), "q_rank \\(60\\) must be divisible by q_heads"),
        (dict(hidden_size=100, q_rank=16, q_heads=8), "hidden_size \\(100\\) must be divisible"),
        (dict(hidden_size=0), "hidden_size must be positive"),
        (dict(num_layers=-1), "num_layers must be positive"),
        (dict(q_rank=2.5), "q_rank must be an int"),
        (dict(mixer="transformer"), "mixer must be one of"),
        (dict(dropout=1.5), "dropout"),
        (dict(mixer="mha", q_value_content=True), "SAVO"),
        (dict(image_size=225), "multiple of patch_size"),
    ],
)
def test_validation_messages(fields, message):
    with pytest.raises(ValueError, match=message):
        QuatrixConfig(**fields)


def test_unknown_field_and_preset():
    with pytest.raises(ValueError, match="unknown QuatrixConfig field"):
        QuatrixConfig.from_dict({"hidden": 3})
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        preset("huge")
    with pytest.raises(ValueError, match="not valid JSON"):
        QuatrixConfig.from_json("{not json")
