import errno
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
from quatrix.train import optim, resume


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    text = "the quick brown fox jumps over the lazy dog " * 50
    return train_tokenizer([text], 300, tmp_path_factory.mktemp("tok"))


def make(tokenizer):
    model = QuatrixLM(tiny_config(vocab_size=tokenizer.vocab_size))
    optimizers = optim.build_optimizers(model, "adamw", 1e-3, 0.1)
    ids = torch.randint(0, tokenizer.vocab_size, (2, 8))
    model(ids, labels=ids)["loss"].backward()
    for opt in optimizers:
        opt.step()
    return model, optimizers


def save(out, tokenizer, model, optimizers, step):
    return resume.save_checkpoint(out, model, tokenizer, optimizers, step, {"text": {"epoch": 0, "cursor": step}},
                                  {"steps": 10, "out": str(out)})


def saved_step(out):
    return resume.load_checkpoint_state(out / resume.CHECKPOINT_DIR)["step"]


def test_checkpoint_roundtrip_restores_everything(tmp_path, tokenizer):
    model, optimizers = make(tokenizer)
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    save(tmp_path, tokenizer, model, optimizers, 7)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    state = resume.load_checkpoint_state(tmp_path / "checkpoint")  # weights_only: no pickled code
    assert state["step"] == 7 and state["loader"] == {"text": {"epoch": 0, "cursor": 7}}
    resume.restore_rng(state["rng"])
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(1), expected[2])
    other, other_opts = make(tokenizer)
    assert resume.restore(tmp_path / "checkpoint", other, other_opts, _Loader(), model.config) == 7
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
        (tmp / resume.MANIFEST_NAME).unlink()
        expected = 2
        if moment == "unsealed_tmp_no_final":
            shutil.rmtree(final)
            expected = None
    recovered = resume.recover_checkpoint(tmp_path)
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
        resume.verify_checkpoint(tmp_path / "checkpoint")
    with pytest.raises(ValueError, match=name):
        resume.load_checkpoint_state(tmp_path / "checkpoint")


def test_trainer_state_never_unpickles_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("executed",))

    (tmp_path / "trainer_state.pt").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ValueError, match="corrupt or not a Quatrix trainer state"):
        resume.load_checkpoint_state(tmp_path)
    torch.save({"something": torch.zeros(1)}, tmp_path / "trainer_state.pt")
    with pytest.raises(ValueError, match="not a Quatrix trainer state"):
        resume.load_checkpoint_state(tmp_path)



def test_a_training_process_asks_mkl_for_reproducible_reductions(tmp_path):
    """MKL_CBWR=AUTO (set by pin_threads before the first matmul) shows in every MKL call of a
    fresh training process, and a user's own MKL_CBWR is kept."""
    import os
    import subprocess
    import sys

    script = ("import torch\nfrom quatrix.train.distributed import pin_threads\npin_threads()\n"
              "a = torch.randn(64, 64)\nprint(float((a @ a).sum()))\n")
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    for given, expected in [(None, "CNR:AUTO"), ("COMPATIBLE", "CNR:COMPATIBLE")]:
        run_env = {**env, "MKL_VERBOSE": "1", **({"MKL_CBWR": given} if given else {})}
        out = subprocess.run([sys.executable, "-c", script], env=run_env, capture_output=True, text=True, check=True)
        if "MKL_VERBOSE" not in out.stdout + out.stderr:
            pytest.skip("this torch build does not call MKL for matmuls")
        assert expected in out.stdout + out.stderr
