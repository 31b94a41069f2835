"""The benchmarks that read a finished `quatrix run berry` folder: lm-eval and finetuning the export."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[2] / "benchmarks"


def berry_run(root, checkpoint, max_new_tokens: int = 4):
    """What a `quatrix run berry` folder holds for the benchmarks that read one: its recipe and
    the GRPO checkpoint (here the tests' tiny chat checkpoint)."""
    import shutil

    from tests.conftest import TASK

    shutil.copytree(checkpoint, root / "grpo" / "checkpoint")
    (root / "recipe.json").write_text(json.dumps({"eval": {"math_task": TASK, "max_new_tokens": max_new_tokens}}))
    return root


def test_lm_eval_benchmark_scores_the_run_as_quatrix_does(chat_checkpoint, tmp_path):
    pytest.importorskip("lm_eval", reason="the [eval] extra (lm-eval) is not installed")
    pytest.importorskip("fastapi", reason="the [serve] extra (fastapi, uvicorn) is not installed")
    run = berry_run(tmp_path / "run", chat_checkpoint)
    out = subprocess.run([sys.executable, str(BENCH / "lm_eval_berry.py"), str(run), "--out", str(tmp_path / "out"),
                          "--n", "6", "--lines", "4"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    ways = json.loads((tmp_path / "out" / "results.json").read_text())["ways"]
    assert len(ways) == 2
    for way in ways.values():
        assert way["math"]["items_scored_alike"] == way["math"]["n"] == 6
        assert way["math"]["harness_exact_match"] == way["math"]["quatrix_accuracy"]
        assert way["lines"]["n"] == 4 and way["lines"]["largest_loglikelihood_difference"] < 1e-4
        assert way["lines"]["harness_acc"] == way["lines"]["quatrix_acc"]


def test_finetune_export_benchmark_trains_full_and_lora(chat_checkpoint, tmp_path):
    pytest.importorskip("trl", reason="the [hf] extra (transformers, peft, trl) is not installed")
    run = berry_run(tmp_path / "run", chat_checkpoint)
    out = subprocess.run([sys.executable, str(BENCH / "finetune_export.py"), str(run), "--out", str(tmp_path / "out"),
                          "--task", "chain_sum:min_terms=3,max_terms=3,max_digits=1", "--steps", "3",
                          "--batch-size", "4", "--n-eval", "4", "--max-new-tokens", "4"],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    assert result["full"]["trainable"] == result["full"]["total"]
    assert 0 < result["lora"]["trainable"] < result["lora"]["total"] // 4
    for name in ("full", "lora"):
        assert result[name]["after"]["eval_loss"] < result[name]["before"]["eval_loss"]  # 3 steps on the same task
    assert "| PEFT LoRA, all-linear, r=8 |" in out.stdout


@pytest.mark.parametrize("script", ["lm_eval_berry.py", "finetune_export.py"])
def test_run_benchmarks_name_a_folder_that_is_not_a_finished_run(script, tmp_path):
    done = subprocess.run([sys.executable, str(BENCH / script), str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "not found: RUN must be a finished `quatrix run berry" in done.stderr
    assert "Traceback" not in done.stderr
