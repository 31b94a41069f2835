"""The memory planner: fake-tensor predictions against the same step on real tensors, the
CUDA model of the mixers, budgets, recipes and bad input."""

import json

import pytest

from quatrix import QuatrixLM
from quatrix.cli import main
from quatrix.config import preset
from quatrix.train import memory
from quatrix.train.memory import (CUDA_ALLOWANCE, StepPlan, check_recipe_stage, max_batch_size, measure, predict,
                                  recipe_plan)
from quatrix.train.recipe import load_recipe

GiB = 2**30


@pytest.mark.parametrize("name, batch, seq", [("tiny", 2, 64), ("berry-q0", 1, 32)])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_predicted_peak_is_within_ten_percent_of_the_measured_one(name, batch, seq, precision, checkpointing):
    plan = StepPlan(preset(name, use_gradient_checkpointing=checkpointing), batch, seq, precision=precision,
                    device="cpu", image_data=name == "berry-q0")
    predicted, measured = predict(plan), measure(plan)
    assert abs(predicted["peak_bytes"] - measured["peak_bytes"]) <= 0.10 * measured["peak_bytes"]
    parts = predicted["parts"]
    assert parts["allowance"] == 0 and sum(parts.values()) == predicted["peak_bytes"]
    params = sum(p.numel() for p in QuatrixLM(plan.config).parameters()) * 4
    assert parts["parameters"] == params


def test_the_savers_save_and_the_cuda_model_keeps_no_routing_matrix():
    cfg = preset("tiny", use_vision=False)
    base = dict(precision="bf16", device="cuda")
    plain = predict(StepPlan(cfg, 8, 256, chunked_loss=False, **base))
    chunked = predict(StepPlan(cfg, 8, 256, **base))
    both = predict(StepPlan(preset("tiny", use_vision=False, use_gradient_checkpointing=True), 8, 256, **base))
    assert plain["peak_bytes"] > chunked["peak_bytes"] > both["peak_bytes"]
    assert chunked["parts"]["allowance"] == CUDA_ALLOWANCE
    # on a GPU the fused kernel keeps O(L) per head, where the CPU's plain path keeps [L, L]
    short = predict(StepPlan(cfg, 2, 128, **base))["parts"]
    long = predict(StepPlan(cfg, 2, 256, **base))["parts"]
    on_cpu = predict(StepPlan(cfg, 2, 256, precision="bf16", device="cpu"))["parts"]
    assert long["activations"] / short["activations"] < 1.9
    assert on_cpu["activations"] > 1.2 * long["activations"]


def test_max_batch_size_is_the_largest_that_fits(monkeypatch):
    plan = StepPlan(preset("tiny", use_vision=False), 1, 128, device="cpu")
    budget = predict(StepPlan(plan.config, 40, 128, device="cpu"))["peak_bytes"] + 1
    sizes = []
    monkeypatch.setattr(memory, "predict", lambda p: sizes.append(p.batch_size) or predict(p))
    best = max_batch_size(plan, budget)
    assert best >= 40 and len(sizes) == len(set(sizes)) <= 8  # secant steps, each size predicted once
    monkeypatch.undo()
    assert predict(StepPlan(plan.config, best + 1, 128, device="cpu"))["peak_bytes"] > budget
    assert max_batch_size(plan, 1000) == 0


def test_every_stage_of_the_berry_q0_recipe_is_planned_within_5_5_gib():
    recipe = load_recipe("berry-q0")
    for stage in ("pretrain", "sft", "grpo"):
        plan = recipe_plan(recipe, stage)
        assert plan.device == "cuda" and plan.precision == "bf16"
        assert predict(plan)["peak_bytes"] <= 5.5 * GiB, stage


def test_a_stage_that_does_not_fit_is_refused_with_a_micro_batch_that_does():
    recipe = load_recipe("tiny")  # a small model keeps the search quick; the check is the same
    recipe["pretrain"].update(device="cuda", precision="bf16", batch_size=64)
    plan = recipe_plan(recipe, "pretrain")
    free = predict(StepPlan(plan.config, 8, plan.seq_len, precision="bf16", device="cuda", image_data=True))["peak_bytes"]
    with pytest.raises(SystemExit, match=r"pretrain: one step is planned to need .* GiB free\. Set \"batch_size\": (8|9|10)\b"):
        check_recipe_stage(recipe, "pretrain", free)
    assert check_recipe_stage(recipe, "pretrain", 100 * GiB)["peak_bytes"] > free


def test_the_command(capsys):
    assert main(["memory", "--preset", "tiny", "--batch-size", "2", "--seq-len", "64", "--device", "cpu",
                 "--measure"]) == 0
    text = capsys.readouterr().out
    assert "predicted MiB" in text and "measured MiB" in text and "logits_loss" in text
    assert main(["memory", "--preset", "tiny", "--seq-len", "64", "--budget", "1GiB", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["max_batch_size"] >= 1 and out["fits"] and out["peak_bytes"] <= GiB
    assert set(out["parts"]) == {"parameters", "gradients", "optimizer", "activations", "logits_loss", "allowance"}


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "2", "--budget", "six"], "cannot read 'six' as a memory size"),
    (["--seq-len", "64"], "give --batch-size, or --budget"),
    (["--batch-size", "2", "--seq-len", "99999"], "longer than the model's context"),
    (["--batch-size", "2", "--config", "/nonexistent.json"], "cannot read the model config"),
])
def test_bad_input_is_named(argv, message, capsys):
    assert main(["memory", "--preset", "tiny", *argv]) != 0
    assert message in capsys.readouterr().err
