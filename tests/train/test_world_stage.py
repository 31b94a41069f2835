import json

import pytest
import torch

from quatrix import QuatrixLM
from quatrix.cli import main
from quatrix.data.world import collect

KEYS = {"mse", "mse_copy_state", "mse_predict_mean", "action_accuracy", "probe_position_predicted",
        "probe_position_copy", "probe_direction_predicted", "probe_direction_copy"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("world_data")
    collect("MiniGrid-Empty-5x5-v0", 22, out, seed=1, image_size=16, max_steps=12)
    return out


def train(init, data, out, *extra):
    return main(["world", "train", "--data", str(data), "--init", str(init), "--steps", "6", "--batch-size", "16",
                 "--warmup", "1", "--eval-every", "3", "--save-every", "2", "--precision", "fp32", "--out", str(out),
                 *extra])


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_world_train_learns_only_the_world_model_and_eval_reports_the_baselines(chat_checkpoint, data, tmp_path,
                                                                                capsys):
    assert train(chat_checkpoint, data, tmp_path / "run") == 0
    rows = records(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(1, 7)) and "val_mse" in rows[2]
    before = QuatrixLM.from_pretrained(chat_checkpoint).state_dict()
    after = QuatrixLM.from_pretrained(tmp_path / "run" / "checkpoint")
    assert after.world is not None and after.config.world_image_size == 16
    assert all(torch.equal(before[k], after.state_dict()[k]) for k in before)  # the language model is frozen
    capsys.readouterr()
    assert main(["world", "eval", "--ckpt", str(tmp_path / "run" / "checkpoint"), "--data", str(data)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert KEYS <= set(result) and result["transitions"] > 0
    assert all(0 <= result[k] <= 1 for k in KEYS if k.startswith(("probe", "action")))


def test_world_train_resumes_exactly(chat_checkpoint, data, tmp_path):
    assert train(chat_checkpoint, data, tmp_path / "full") == 0
    assert train(chat_checkpoint, data, tmp_path / "cut", "--stop-after", "3") == 0
    assert train(chat_checkpoint, data, tmp_path / "cut", "--resume") == 0
    assert [r["loss"] for r in records(tmp_path / "full")] == [r["loss"] for r in records(tmp_path / "cut")]


def test_world_eval_and_train_refuse_what_they_cannot_use(chat_checkpoint, data, tmp_path, capsys):
    assert main(["world", "eval", "--ckpt", str(chat_checkpoint), "--data", str(data)]) == 2
    assert "has no world model" in capsys.readouterr().err
    assert main(["world", "train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "x")]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    assert train(chat_checkpoint, data, tmp_path / "big", "--batch-size", "5000") == 2
    assert "fewer than one batch" in capsys.readouterr().err


@pytest.mark.slow
def test_world_train_under_two_process_ddp(chat_checkpoint, data, tmp_path):
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29541",
           "-m", "quatrix.cli", "world", "train", "--data", str(data), "--init", str(chat_checkpoint), "--steps", "3",
           "--batch-size", "8", "--warmup", "1", "--eval-every", "3", "--save-every", "3", "--precision", "fp32",
           "--device", "cpu", "--out", str(tmp_path / "ddp")]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "ddp" / "run_config.json").read_text())["world_size"] == 2
    assert [r["step"] for r in records(tmp_path / "ddp")] == [1, 2, 3]
    assert QuatrixLM.from_pretrained(tmp_path / "ddp" / "checkpoint").world is not None
