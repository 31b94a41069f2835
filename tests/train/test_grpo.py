import json

import pytest
import torch

from quatrix import QuatrixLM
from quatrix.cli import main
from quatrix.tasks.sampling import Completions
from quatrix.train.grpo import rollout_batch
from tests.conftest import TASK

FIELDS = {"step", "loss", "lr", "reward", "reward_std", "accuracy", "format_rate", "kl", "clip_ratio",
          "completion_length", "entropy", "frac_zero_std_groups", "gen_tokens_per_s"}


def grpo(init, out, *extra, steps=4):
    return main(["grpo", "--init", str(init), "--task", TASK, "--steps", str(steps), "--prompts-per-step", "3",
                 "--group-size", "4", "--micro-batch", "5", "--max-new-tokens", "8", "--eval-every", "2",
                 "--eval-n", "6", "--save-every", "2", "--lr", "1e-3", "--precision", "fp32", "--out", str(out),
                 *extra])


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("extra", [[], ["--beta", "0.1", "--num-iterations", "2", "--loss-type", "grpo",
                                        "--scale-rewards", "batch", "--mask-truncated", "--epsilon-high", "0.28"]])
def test_grpo_runs_and_logs_every_field(chat_checkpoint, tmp_path, extra):
    assert grpo(chat_checkpoint, tmp_path / "run", *extra) == 0
    rows = records(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(FIELDS <= set(r) for r in rows)
    assert ["eval_accuracy" in r for r in rows] == [False, True, False, True]
    assert all(r["gen_tokens_per_s"] > 0 and r["cache_mib"] > 0 for r in rows)
    if "--beta" in extra:
        assert all(r["kl"] is not None and r["kl"] >= 0 for r in rows)
    for name in ("reward.png", "loss.png", "summary.json", "run_config.json", "checkpoint/manifest.json"):
        assert (tmp_path / "run" / name).is_file(), name


@pytest.fixture(scope="module")
def finetuned(chat_checkpoint, tmp_path_factory):
    """The tiny model after a little SFT: it ends some answers, so completions differ in length and format."""
    from tests.train.test_sft import sft

    out = tmp_path_factory.mktemp("grpo_init")
    assert sft(chat_checkpoint, out, "--lr", "1e-2", "--sample-tokens", "0", steps=30) == 0
    return out / "checkpoint"


def test_grpo_moves_the_policy_when_rewards_differ(finetuned, tmp_path):
    assert grpo(finetuned, tmp_path / "len", "--reward-weights", "correct=1,format=1,length=1") == 0
    rows = records(tmp_path / "len")
    assert all(r["frac_zero_std_groups"] < 1 and r["grad_norm"] > 0 for r in rows)
    before = QuatrixLM.from_pretrained(finetuned).state_dict()
    after = QuatrixLM.from_pretrained(tmp_path / "len" / "checkpoint").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_grpo_resumes_exactly(finetuned, tmp_path):
    weights = ["--reward-weights", "correct=1,format=1,length=1"]
    assert grpo(finetuned, tmp_path / "full", *weights) == 0
    assert grpo(finetuned, tmp_path / "cut", *weights, "--stop-after", "3") == 0
    assert grpo(finetuned, tmp_path / "cut", *weights, "--resume") == 0
    keys = ("loss", "reward", "completion_length", "entropy", "grad_norm")
    assert [[r[k] for k in keys] for r in records(tmp_path / "full")] == \
           [[r[k] for k in keys] for r in records(tmp_path / "cut")]


def test_rollout_batch_masks_only_completion_tokens():
    rollouts = Completions(tokens=[[5, 6], [7], [8, 9, 9]], texts=["", "", ""], truncated=[False, False, True],
                           prompt_ids=[[1, 2, 3], [4]], seconds=1.0, cache_bytes=0)
    batch = rollout_batch(rollouts, group_size=2, end_id=99, pad_id=0, mask_truncated=False)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 5, 6, 99], [1, 2, 3, 7, 99, 0], [4, 8, 9, 9, 0, 0]]
    assert batch["mask"].tolist() == [[0, 0, 1, 1, 1], [0, 0, 1, 1, 0], [1, 1, 1, 0, 0]]
    masked = rollout_batch(rollouts, group_size=2, end_id=99, pad_id=0, mask_truncated=True)
    assert masked["mask"][2].sum() == 0 and masked["mask"][0].sum() == 3


@pytest.mark.parametrize("extra, message", [
    (["--group-size", "1"], "--group-size"),
    (["--reward-weights", "speed=1"], "NAME=WEIGHT"),
    (["--task", "nope"], "unknown task"),
    (["--epsilon", "0"], "--epsilon"),
])
def test_bad_grpo_arguments_fail_clearly(chat_checkpoint, tmp_path, capsys, extra, message):
    try:
        code = grpo(chat_checkpoint, tmp_path / "bad", *extra)
    except SystemExit as e:  # argparse refuses bad flag values itself
        code = e.code
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_two_process_ddp(finetuned, tmp_path, stage):
    """Both stages under torchrun with the gloo backend: each rank its own items, one set of weights."""
    import os
    import subprocess
    import sys

    flags = {"sft": ["--data", f"task:{TASK}", "--batch-size", "4", "--seq-len", "96", "--eval-n", "8", "--warmup", "1",
                     "--sample-tokens", "0"],
             "grpo": ["--task", TASK, "--prompts-per-step", "2", "--group-size", "4", "--max-new-tokens", "6",
                      "--eval-n", "4", "--reward-weights", "correct=1,format=1,length=1"]}[stage]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={29530 + len(stage)}",
           "-m", "quatrix.cli", stage, "--init", str(finetuned), "--steps", "3", "--eval-every", "3",
           "--save-every", "3", "--precision", "fp32", "--device", "cpu", "--out", str(tmp_path / stage), *flags]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / stage / "run_config.json").read_text())["world_size"] == 2
    rows = records(tmp_path / stage)
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["loss"] == r["loss"] for r in rows)
    QuatrixLM.from_pretrained(tmp_path / stage / "checkpoint")
