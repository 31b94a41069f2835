import json
import math

import pytest

from quatrix.cli import main
from quatrix.eval.tasks import evaluate_task, mcnemar_exact, pass_at_k, wilson_interval
from quatrix.tasks import task_from_spec
from quatrix.pretrained import load_model_and_tokenizer
from tests.conftest import TASK


def test_pass_at_k_is_the_unbiased_estimator():
    assert pass_at_k(10, 0, 3) == 0.0 and pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(4, 2))
    assert pass_at_k(3, 1, 3) == 1.0


def test_wilson_interval_contains_the_estimate_and_narrows():
    low, high = wilson_interval(30, 100)
    assert low < 0.3 < high and 0.2 < low and high < 0.4
    low2, high2 = wilson_interval(300, 1000)
    assert high2 - low2 < high - low
    assert wilson_interval(0, 50)[0] == 0.0


def test_evaluate_task_counts_what_the_checker_accepts(chat_checkpoint):
    model, tok = load_model_and_tokenizer(chat_checkpoint)
    task = task_from_spec(TASK)
    result = evaluate_task(model, tok, task, 6, batch_size=4, max_new_tokens=6, pass_k=2)
    assert result["n"] == 6 and 0 <= result["accuracy"] <= 1 and 0 <= result["pass@2"] <= 1
    assert set(result) >= {"accuracy", "ci95", "format_rate", "mean_completion_tokens", "pass@2"}
    # an oracle that answers right every time scores 1: the scoring path is the task's checker
    items = task.eval_items(6)
    assert all(task.score_text(f"<think></think><answer>{i.answer}</answer>", i) == 1.0 for i in items)


def test_eval_cli_prints_json_for_a_task(chat_checkpoint, capsys):
    assert main(["eval", "--ckpt", str(chat_checkpoint), "--task", TASK, "--n", "4", "--max-new-tokens", "4",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 4 and result["task"] == "chain_sum"
    assert main(["eval", "--ckpt", str(chat_checkpoint), "--task", "visual_qa", "--n", "2"]) == 2
    assert "no vision encoder" in capsys.readouterr().err


def test_mcnemar_exact_p_values():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0
    assert abs(mcnemar_exact(0, 5) - 2 / 32) < 1e-12  # all five disagreements one way
    assert abs(mcnemar_exact(37, 68) - mcnemar_exact(68, 37)) < 1e-15
    assert mcnemar_exact(37, 68) < 0.01
