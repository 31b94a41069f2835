import pytest
import torch
from torch.testing import assert_close

from conftest import tiny_config
from quatrix import QuatrixLM, load_legacy_state_dict


def legacy_state_dict(model):
    """Our weights under the original package's key names (`compass`, DDP prefix)."""
    return {f"module.{k.replace('.mixer.', '.compass.')}": v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("overrides", [dict(use_vision=True), dict(q_value_content=True), dict(q_heads=4)])
def test_legacy_state_dict_loads(tmp_path, overrides):
    model = QuatrixLM(tiny_config(**overrides)).eval()
    torch.save({"model": legacy_state_dict(model)}, tmp_path / "legacy.pt")
    heads = {"q_heads": overrides["q_heads"]} if "q_heads" in overrides else {}
    loaded = load_legacy_state_dict(tmp_path / "legacy.pt", **heads).eval()
    fields = ["vocab_size", "hidden_size", "num_layers", "max_seq_len", "q_rank", "q_value_content", "q_heads",
              "use_vision", "tie_embeddings"]
    if model.config.use_vision:
        fields += ["image_size", "patch_size", "vision_hidden_size", "vision_layers", "vision_q_rank"]
    for field in fields:
        assert getattr(loaded.config, field) == getattr(model.config, field), field
    ids = torch.randint(0, 97, (1, 8))
    assert_close(loaded(ids)["logits"], model(ids)["logits"])


def test_legacy_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="legacy checkpoint not found"):
        load_legacy_state_dict(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="could not be read as a state dict"):
        load_legacy_state_dict(tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="not a Quatrix language-model state dict"):
        load_legacy_state_dict({"foo.weight": torch.zeros(2)})
    state = legacy_state_dict(QuatrixLM(tiny_config()))
    state["world_action_emb.weight"] = torch.zeros(7, 4)
    with pytest.raises(ValueError, match="unexpected: world_action_emb.weight"):
        load_legacy_state_dict(state)
