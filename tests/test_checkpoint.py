import json

import pytest
import torch

from conftest import tiny_config
from quatrix import QuatrixLM
from quatrix.io import atomic_path


@pytest.mark.parametrize("overrides", [dict(), dict(q_value_content=True, use_vision=True), dict(tie_embeddings=False)])
def test_round_trip_gives_identical_logits(tmp_path, overrides):
    model = QuatrixLM(tiny_config(**overrides)).eval()
    model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    loaded = QuatrixLM.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.config == model.config
    ids = torch.randint(0, 97, (2, 9))
    pixels = torch.randn(2, 3, 32, 32) if model.vision is not None else None
    assert torch.equal(model(ids, pixel_values=pixels)["logits"], loaded(ids, pixel_values=pixels)["logits"])
    if model.config.tie_embeddings:
        assert loaded.head.weight is loaded.token_emb.weight


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        QuatrixLM.from_pretrained(tmp_path / "nope")
    QuatrixLM(tiny_config()).save_pretrained(tmp_path / "c")
    weights = (tmp_path / "c" / "model.safetensors").read_bytes()
    (tmp_path / "c" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(ValueError, match="corrupt or not a safetensors file"):
        QuatrixLM.from_pretrained(tmp_path / "c")
    (tmp_path / "c" / "config.json").write_text("{broken")
    with pytest.raises(ValueError, match="not a valid Quatrix config"):
        QuatrixLM.from_pretrained(tmp_path / "c")
    (tmp_path / "c" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        QuatrixLM.from_pretrained(tmp_path / "c")


def test_mismatched_config_names_the_tensors(tmp_path):
    QuatrixLM(tiny_config()).save_pretrained(tmp_path / "c")
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    config["q_rank"] = 8
    config["num_layers"] = 3
    (tmp_path / "c" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not match the model config: missing: blocks.2.*shape mismatch: "
                                         "blocks.0.mixer.state_proj.weight"):
        QuatrixLM.from_pretrained(tmp_path / "c")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
