import argparse
import json
import math

import numpy as np
import pytest
import torch

from quatrix.cli import main
from quatrix.train import ablate, ablate_stats
from quatrix.tokenizer import train_tokenizer

WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly hum".split()


def options(**kw):
    p = argparse.ArgumentParser()
    ablate.add_arguments(p)
    args = p.parse_args([])
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def test_variants_differ_only_in_the_mixer():
    configs = ablate.plan(options(), vocab_size=300)
    assert list(configs) == ["qcompass", "savo", "mh-qcompass", "mha_rank", "mha"]
    dicts = {n: c.to_dict() for n, (c, _) in configs.items()}
    for d in dicts.values():
        for key in ("mixer", "q_heads", "q_value_content"):
            d.pop(key)
    assert all(d == dicts["mha"] for d in dicts.values())
    assert configs["savo"][0].q_value_content and configs["mh-qcompass"][0].q_heads == 4
    with pytest.raises(ValueError, match="unknown variant 'rnn'"):
        ablate.plan(options(variants="rnn,mha"), 300)
    with pytest.raises(ValueError, match="--reference 'mha' must be one of"):
        ablate.plan(options(variants="qcompass,savo"), 300)


@pytest.mark.parametrize("match", ["params", "flops"])
def test_matching_widens_each_variant_to_the_reference(match):
    args = options(match=match)
    configs = ablate.plan(args, vocab_size=300)
    target = ablate.cost(configs["mha"][0], match, args.seq_len)
    for name, (config, changed) in configs.items():
        if name == "mha":
            assert changed == {}
            continue
        assert abs(ablate.cost(config, match, args.seq_len) - target) / target <= 0.02
        assert changed["gap"] <= 0.02
        for field in ("hidden_size", "num_layers"):
            if field in changed:
                assert changed[field] == [getattr(configs["mha"][0], field), getattr(config, field)]
    q = configs["qcompass"][0]
    assert q.num_layers == 4 and q.hidden_size > 128  # Q-Compass spends what it saves on width


def test_paired_statistics_by_hand():
    result = ablate_stats.paired([1.0, 1.2, 0.9], [0.8, 1.0, 0.85])  # differences 0.2, 0.2, 0.05
    assert result["mean"] == pytest.approx(0.15)
    assert result["std"] == pytest.approx(math.sqrt(0.0075))
    # t = 0.15 / (sqrt(0.0075) / sqrt(3)) = 3.0; with 2 degrees of freedom P(|T| > t) = 1 - t / sqrt(t^2 + 2)
    assert result["p_value"] == pytest.approx(1 - 3 / math.sqrt(11), rel=1e-6)
    assert math.isnan(ablate_stats.paired([1.0], [0.5])["p_value"])


def test_tables_show_a_spread_only_when_there_is_one():
    assert ablate_stats.spread(4.9, 0.0126) == "4.9000 ± 0.0126"
    assert ablate_stats.spread(0.05, 0.01, sign="+") == "+0.0500 ± 0.0100"
    assert ablate_stats.spread(*ablate_stats.mean_std([86.5]), digits=2) == "86.50"


def test_late_drop_measures_how_far_the_curve_still_falls():
    records = [{"step": 1, "loss": 9.0}] + [{"step": s, "val_loss": v} for s, v in
                                            [(25, 6.0), (50, 5.5), (75, 5.2), (80, 5.1), (100, 5.0)]]
    assert ablate_stats.late_drop(records) == pytest.approx(0.1)  # 80 is the last evaluation at or before 80% of 100
    assert ablate_stats.late_drop(records, fraction=0.5) == pytest.approx(0.5)
    assert math.isnan(ablate_stats.late_drop([{"step": 10, "val_loss": 5.0}]))
    assert math.isnan(ablate_stats.late_drop([{"step": 1, "loss": 9.0}]))


def test_gap_curve_pairs_seeds_at_shared_evaluations():
    def run(vals, extra=()):
        return [{"step": 1, "loss": 9.0}] + [{"step": s, "val_loss": v} for s, v in [*vals, *extra]]

    variant = [run([(10, 5.0), (20, 4.0)], [(30, 3.5)]), run([(10, 5.2), (20, 4.4)])]
    reference = [run([(10, 4.9), (20, 3.9)]), run([(10, 5.0), (20, 4.0)], [(30, 3.0)])]
    curve = ablate_stats.gap_curve(variant, reference)  # step 30 is not shared by both seeds: dropped
    assert curve["steps"] == [10, 20]
    assert curve["mean"] == pytest.approx([0.15, 0.25])  # (0.1 + 0.2) / 2, (0.1 + 0.4) / 2
    assert curve["std"] == pytest.approx([math.sqrt(0.005), math.sqrt(0.045)])
    assert ablate_stats.gap_at(curve, 0.5) == pytest.approx((0.15, math.sqrt(0.005)))
    assert ablate_stats.gap_at(curve, 1.0) == pytest.approx((0.25, math.sqrt(0.045)))
    assert all(math.isnan(x) for x in ablate_stats.gap_at(curve, 0.25))  # no evaluation that early
    one = ablate_stats.gap_curve(variant[:1], reference[:1])
    assert one["mean"] == pytest.approx([0.1, 0.1]) and all(math.isnan(x) for x in one["std"])


@pytest.mark.slow
def test_two_variants_two_seeds_produce_every_output(tmp_path, capsys):
    rng = np.random.default_rng(0)
    text = "\n".join(" ".join(rng.choice(WORDS, 8)) for _ in range(3000)) + "\n"
    (tmp_path / "corpus.txt").write_text(text)
    (tmp_path / "other.txt").write_text(text.upper())
    train_tokenizer([text, text.upper()], 300, tmp_path / "tok")
    argv = ["ablate", "--variants", "qcompass,mha", "--seeds", "0,1", "--steps", "4", "--eval-every", "2",
            "--batch-size", "4", "--seq-len", "32", "--eval-batches", "2", "--data", str(tmp_path / "corpus.txt"),
            "--eval-data", str(tmp_path / "other.txt"), "--tokenizer", str(tmp_path / "tok"), "--out",
            str(tmp_path / "abl")]
    assert main(argv) == 0
    out = tmp_path / "abl"
    results = json.loads((out / "results.json").read_text())
    for name in ("qcompass", "mha"):
        v = results["variants"][name]
        assert set(v["val_loss"]) == {"0", "1"} and all(np.isfinite(list(v["val_loss"].values())))
        assert v["params_total"] > 0 and str(tmp_path / "other.txt") in v["ood_loss"]
    assert results["variants"]["qcompass"]["params_mixer"] < results["variants"]["mha"]["params_mixer"]
    assert "paired t-test" in (out / "results.md").read_text()

    def last_val(name, seed):
        lines = (out / "runs" / name / f"seed{seed}" / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["val_loss"] for line in lines if "val_loss" in line][-1]

    gap = results["variants"]["qcompass"]["val_gap_curve"]
    assert gap["steps"] == [2, 4] and len(gap["std"]) == 2
    assert gap["mean"][-1] == pytest.approx(np.mean([last_val("qcompass", s) - last_val("mha", s) for s in (0, 1)]))
    assert "| qcompass | " in (out / "results.md").read_text().split("during training")[1]
    equal = (out / "results.md").read_text().split("equal wall-clock")[1]
    assert "| qcompass | " in equal and "equal FLOPs" in equal and results["equal_seconds"]["budget"] > 0
    ends = {n: results["variants"][n]["training_seconds"] for n in ("qcompass", "mha")}
    assert results["equal_seconds"]["budget"] == pytest.approx(min(t for e in ends.values() for t in e.values()))
    assert ", ".join(f"{t:.1f}" for t in ends["qcompass"].values()) in equal.split("equal FLOPs")[0]
    flops = results["variants"]["qcompass"]["training_flops_per_token"]
    assert flops > 0 and f"{flops / 1e6:.3f} M" in equal.split("equal FLOPs")[1]
    assert all(set(results["variants"][n]["val_drop_last_20pct"]) == {"0", "1"} for n in ("qcompass", "mha"))
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    # the same seed gives the same data order for every variant: the data order is a function of
    # the options alone, and the runs' options differ only in the model and the output folder
    recorded = {n: json.loads((out / "runs" / n / "seed0" / "run_config.json").read_text())["args"]
                for n in ("qcompass", "mha")}
    differ = {k for k in recorded["qcompass"] if recorded["qcompass"][k] != recorded["mha"][k]}
    assert differ <= {"mixer", "q_heads", "hidden_size", "num_layers", "savo", "out"} and "mixer" in differ
    positions = [torch.load(out / "runs" / n / "seed0" / "checkpoint" / "trainer_state.pt")["loader"]
                 for n in ("qcompass", "mha")]
    assert positions[0] == positions[1]
    # every run trains with the same recipe, warmup included (default: 10% of the steps, at least one)
    recipe = [json.loads((out / "runs" / n / "seed0" / "run_config.json").read_text())["args"] for n in ("qcompass", "mha")]
    assert recipe[0]["warmup"] == recipe[1]["warmup"] == 1 and recipe[0]["lr"] == recipe[1]["lr"]
    assert recipe[0]["eval_batches"] == recipe[1]["eval_batches"] == ablate_stats.PERIODIC_EVAL_BATCHES
    # rerunning resumes: finished runs are not trained again
    stamp = (out / "runs" / "mha" / "seed1" / "summary.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 0
    assert "ablate: training" not in capsys.readouterr().out
    assert (out / "runs" / "mha" / "seed1" / "summary.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("bad, message", [({"steps": 10, "warmup": 10}, "--warmup"),
                                          ({"seeds": "0,x"}, "--seeds must be comma-separated integers"),
                                          ({"seeds": "1,1"}, "--seeds repeats"), ({"steps": 0}, "--steps")])
def test_bad_options_are_refused_before_anything_is_written(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        ablate.main(options(**bad, out=str(tmp_path / "abl")))
    assert not (tmp_path / "abl").exists()


def test_missing_eval_data_fails_before_any_training(tmp_path):
    text = "\n".join(" ".join(WORDS) for _ in range(200)) + "\n"
    (tmp_path / "corpus.txt").write_text(text)
    train_tokenizer([text], 300, tmp_path / "tok")
    args = options(variants="qcompass,mha", data=[str(tmp_path / "corpus.txt")], tokenizer=str(tmp_path / "tok"),
                   eval_data=str(tmp_path / "missing.txt"), out=str(tmp_path / "abl"), steps=2, batch_size=2,
                   seq_len=16)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        ablate.main(args)
    assert not (tmp_path / "abl" / "runs").exists()


def test_run_description_is_a_valid_pretrain_command(tmp_path):
    from quatrix.cli import parse_args

    args = options(data=["a.txt", "b.txt"])
    config, _ = ablate.plan(args, vocab_size=300)["savo"]
    run = ablate.pretrain_run(args, config, 3, tmp_path / "r")
    parsed = parse_args(run.command(resume=True)[3:])
    assert parsed.command == "pretrain" and parsed.resume and parsed.savo and parsed.seed == 3
    assert parsed.data == ["a.txt", "b.txt"] and parsed.mixer == "qcompass" and parsed.q_heads == 1
    for field in ("steps", "batch_size", "seq_len", "lr", "warmup", "eval_every", "eval_batches", "sample_tokens"):
        assert getattr(parsed, field) == getattr(run, field), field


def test_losses_at_equal_wall_clock_and_flops_interpolate_each_curve_at_the_shared_budget():
    def run(seconds_per_step, losses, flops_per_token=1.0):
        records = [{"step": s, "tokens": 100, "tokens_per_s": 100 / seconds_per_step,
                    **({"val_loss": losses[s // 2 - 1]} if s % 2 == 0 else {})} for s in range(1, 2 * len(losses) + 1)]
        return ablate_stats.budget_curve(records, flops_per_token)

    fast = [run(1.0, [4.0, 3.0, 2.0]), run(1.0, [4.2, 3.2, 2.2])]  # evaluations at 2, 4, 6 s
    slow = [run(2.0, [3.5, 2.5, 1.5]), run(2.0, [3.7, 2.7, 1.7])]  # at 4, 8, 12 s
    assert fast[0]["seconds"] == [2.0, 4.0, 6.0] and fast[0]["flops"] == [200.0, 400.0, 600.0]
    equal = ablate_stats.equal_budget({"fast": fast, "slow": slow}, "fast", [0, 1], "seconds")
    assert equal["budget"] == 6.0  # the quickest-finishing run's end
    assert equal["val_loss"]["slow"] == {"0": pytest.approx(3.0), "1": pytest.approx(3.2)}  # halfway from 4 s to 8 s
    assert equal["paired"]["slow"]["mean"] == pytest.approx(1.0)  # slower per step: worse at equal time
    flops = ablate_stats.equal_budget({"fast": fast, "slow": slow}, "fast", [0, 1], "flops")
    assert flops["paired"]["slow"]["mean"] == pytest.approx(-0.5)  # same tokens, lower loss: better at equal FLOPs
    assert np.isnan(ablate_stats.at_budget(fast[0], "seconds", 1.0))  # before the first evaluation
