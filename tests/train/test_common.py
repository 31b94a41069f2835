import errno
import json
import pickle
import random
import shutil

import numpy as np
import pytest
import torch

from conftest import tiny_config
from quatrix import QuatrixLM
from quatrix.io import WriteError
from quatrix.tokenizer import train_tokenizer
from quatrix.train import checkpoints, common


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    text = "the quick brown fox jumps over the lazy dog " * 50
    return train_tokenizer([text], 300, tmp_path_factory.mktemp("tok"))


def make(tokenizer):
    model = QuatrixLM(tiny_config(vocab_size=tokenizer.vocab_size))
    optimizers = common.build_optimizers(model, "adamw", 1e-3, 0.1)
    ids = torch.randint(0, tokenizer.vocab_size, (2, 8))
    model(ids, labels=ids)["loss"].backward()
    for opt in optimizers:
        opt.step()
    return model, optimizers


def save(out, tokenizer, model, optimizers, step):
    return common.save_checkpoint(out, model, tokenizer, optimizers, step, {"text": {"epoch": 0, "cursor": step}},
                                  {"steps": 10, "out": str(out)})


def saved_step(out):
    return common.load_checkpoint_state(out / common.CHECKPOINT_DIR)["step"]


def test_checkpoint_roundtrip_restores_everything(tmp_path, tokenizer):
    model, optimizers = make(tokenizer)
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    save(tmp_path, tokenizer, model, optimizers, 7)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    state = common.load_checkpoint_state(tmp_path / "checkpoint")  # weights_only: no pickled code
    assert state["step"] == 7 and state["loader"] == {"text": {"epoch": 0, "cursor": 7}}
    checkpoints.restore_rng(state["rng"])
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(1), expected[2])
    other, other_opts = make(tokenizer)
    assert common.restore(tmp_path / "checkpoint", other, other_opts, _Loader(), model.config) == 7
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(other_opts[0].state_dict()["state"][0]["exp_avg"], optimizers[0].state_dict()["state"][0]["exp_avg"])


class _Loader:
    def load_state_dict(self, state):
        self.state = state


@pytest.mark.parametrize("moment", ["between_renames", "old_only", "unsealed_tmp", "unsealed_tmp_no_final"])
def test_recover_checkpoint_from_every_state_a_kill_can_leave(tmp_path, tokenizer, moment):
    model, optimizers = make(tokenizer)
    save(tmp_path, tokenizer, model, optimizers, 1)
    final, tmp, old = tmp_path / "checkpoint", tmp_path / ".checkpoint.tmp", tmp_path / ".checkpoint.old"
    shutil.copytree(final, tmp_path / "step1")
    save(tmp_path, tokenizer, model, optimizers, 2)
    (tmp_path / "step1").rename(old)
    if moment == "between_renames":  # killed after checkpoint -> .old, before .tmp -> checkpoint
        final.rename(tmp)
        expected = 2
    elif moment == "old_only":  # e.g. a sealed .tmp was already removed by hand
        shutil.rmtree(final)
        expected = 1
    else:  # killed while writing .tmp: no manifest yet
        shutil.rmtree(old)
        shutil.copytree(final, tmp)
        (tmp / common.MANIFEST_NAME).unlink()
        expected = 2
        if moment == "unsealed_tmp_no_final":
            shutil.rmtree(final)
            expected = None
    recovered = common.recover_checkpoint(tmp_path)
    if expected is None:
        assert recovered is None and not tmp.exists()
        return
    assert recovered == final and saved_step(tmp_path) == expected
    assert not tmp.exists() and not old.exists()


def test_full_disk_leaves_the_last_checkpoint_loadable(tmp_path, tokenizer, monkeypatch):
    model, optimizers = make(tokenizer)
    save(tmp_path, tokenizer, model, optimizers, 1)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(WriteError, match="could not write the step-2 checkpoint .no space left on the device.; the last checkpoint, .* is unchanged"):
        save(tmp_path, tokenizer, model, optimizers, 2)
    monkeypatch.undo()
    assert saved_step(tmp_path) == 1
    assert not (tmp_path / ".checkpoint.tmp").exists()
    QuatrixLM.from_pretrained(tmp_path / "checkpoint")


@pytest.mark.parametrize("name", ["model.safetensors", "trainer_state.pt", "config.json", "tokenizer.json"])
@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_checkpoint_files_are_named(tmp_path, tokenizer, name, damage):
    model, optimizers = make(tokenizer)
    save(tmp_path, tokenizer, model, optimizers, 1)
    path = tmp_path / "checkpoint" / name
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"damaged: {name}"):
        common.verify_checkpoint(tmp_path / "checkpoint")
    with pytest.raises(ValueError, match=name):
        common.load_checkpoint_state(tmp_path / "checkpoint")


def test_trainer_state_never_unpickles_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("executed",))

    (tmp_path / "trainer_state.pt").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ValueError, match="corrupt or not a Quatrix trainer state"):
        common.load_checkpoint_state(tmp_path)
    torch.save({"something": torch.zeros(1)}, tmp_path / "trainer_state.pt")
    with pytest.raises(ValueError, match="not a Quatrix trainer state"):
        common.load_checkpoint_state(tmp_path)


def test_metrics_drop_a_line_cut_by_a_kill(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n" + json.dumps({"step": 2, "loss": 1.5}) + "\n"
                    + '{"step": 3, "lo')
    assert [r["step"] for r in common.read_metrics(path)] == [1, 2]
    metrics = common.Metrics(tmp_path, resume_step=1)
    metrics.log({"step": 2, "loss": 1.4})
    metrics.close()
    assert [(r["step"], r["loss"]) for r in common.read_metrics(path)] == [(1, 2.0), (2, 1.4)]
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match="metrics.jsonl:2"):
        common.read_metrics(path)


def test_due_and_schedule():
    assert [s for s in range(1, 11) if common.due(s, 3, 10)] == [3, 6, 9, 10]
    assert [s for s in range(1, 11) if common.due(s, 0, 10)] == [10]
    assert common.lr_factor(0, 4, 100) == pytest.approx(0.25)
    assert common.lr_factor(4, 4, 100) == pytest.approx(1.0)
    assert common.lr_factor(100, 4, 100) == pytest.approx(0.1)
    assert common.lr_factor(0, 0, 100) == pytest.approx(1.0)


def test_unused_plugins_are_frozen_and_skipped_by_the_optimizer():
    model = QuatrixLM(tiny_config(use_vision=True, use_world_model=True))
    common.freeze_unused_plugins(model, {"text": 1.0})
    assert not any(p.requires_grad for p in model.vision.parameters())
    assert not any(p.requires_grad for p in model.world.parameters())
    optimized = {id(p) for opt in common.build_optimizers(model, "adamw", 1e-3, 0.1)
                 for group in opt.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in model.vision.parameters()}
    model = QuatrixLM(tiny_config(use_vision=True))
    common.freeze_unused_plugins(model, {"text": 0.5, "image": 0.5})
    assert all(p.requires_grad for p in model.vision.parameters())


def test_final_lr_sets_where_the_cosine_ends():
    assert common.lr_factor(100, 4, 100, final=0.5) == pytest.approx(0.5)
    assert common.lr_factor(60, 4, 100, final=1.0) == pytest.approx(1.0)
