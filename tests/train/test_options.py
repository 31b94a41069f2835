import argparse
import dataclasses
import json

import pytest

from quatrix.cli import main, parse_args
from quatrix.train.grpo import GRPOConfig
from quatrix.train.options import add_arguments, cli_fields, flag_name, from_namespace, from_options, to_argv
from quatrix.train.pretrain import PretrainConfig
from quatrix.train.sft import SFTConfig
from quatrix.train.world import WorldConfig

CONFIGS = [PretrainConfig, SFTConfig, GRPOConfig, WorldConfig]


@pytest.mark.parametrize("config_cls", CONFIGS)
def test_every_field_is_one_flag_with_its_default(config_cls):
    parser = argparse.ArgumentParser()
    add_arguments(parser, config_cls)
    flags = {a.dest: a for a in parser._actions if a.dest != "help"}
    assert set(flags) == {f.name for f in cli_fields(config_cls)}
    for f in cli_fields(config_cls):
        assert flag_name(f.name) in flags[f.name].option_strings
    assert "compute_precision" not in flags  # resolved at run time, never a flag
    required = ["--init", "x", "--task", "chain_sum", "--data", "d"]
    known = [a for i in range(0, len(required), 2) for a in required[i:i + 2] if required[i][2:] in flags]
    config = from_namespace(config_cls, parser.parse_args(known))
    defaults = config_cls(**{k: v for k, v in dataclasses.asdict(config).items() if k in {"init", "task", "data"}})
    assert config.to_dict() == defaults.to_dict()
    assert set(config.explicit) == {"init", "task", "data"} & set(flags)  # given, so never adapted


def test_options_round_trip_through_the_command_line():
    options = {"data": ["a.txt", "b.txt"], "steps": 7, "lr": 0.01, "savo": True, "compile": False, "mixer": "mha"}
    parser = argparse.ArgumentParser()
    add_arguments(parser, PretrainConfig)
    from_argv = from_namespace(PretrainConfig, parser.parse_args(to_argv(options)))
    assert from_argv.to_dict() == from_options(PretrainConfig, options, "test").to_dict()
    assert from_argv.data == ["a.txt", "b.txt"] and from_argv.savo and from_argv.steps == 7


@pytest.mark.parametrize("options, message", [
    ({"stepz": 3}, r"test.stepz: unknown field; it has no --stepz"),
    ({"steps": 0}, r"test.steps: must be >= 1, got 0"),
    ({"lr": "fast"}, r"test.lr: expected a number, got 'fast'"),
    ({"optimizer": "sgd"}, r"test.optimizer: 'sgd' is not one of adamw, muon"),
    ({"savo": "yes"}, r"test.savo: expected true or false"),
    ({"data": "one.txt"}, r"test.data: expected a list"),
    ({"out": "x"}, r"test.out: set by the recipe runner"),
])
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        from_options(PretrainConfig, options, "test", reserved=frozenset({"out"}))


def test_required_options_and_resolved_fields():
    with pytest.raises(ValueError, match="--task is required"):
        from_options(GRPOConfig, {"init": "x"}, "grpo")
    config = from_options(GRPOConfig, {"init": "x", "task": "t", "reward_weights": "correct=1,format=0.5"}, "grpo")
    assert config.rewards["format"] == 0.5  # resolved once, a field of the config


def test_config_file_and_stop_after_are_the_same_for_every_stage(tmp_path):
    (tmp_path / "o.json").write_text(json.dumps({"steps": 4, "eval_n": 3}))
    args = parse_args(["sft", "--init", "x", "--config", str(tmp_path / "o.json"), "--steps", "5", "--stop-after", "2"])
    assert (args.steps, args.eval_n, args.stop_after) == (5, 3, 2)
    for stage in (["pretrain"], ["sft", "--init", "x"], ["grpo", "--init", "x", "--task", "t"],
                  ["world", "train", "--data", "d"]):
        assert parse_args([*stage, "--stop-after", "3"]).stop_after == 3
    with pytest.raises(SystemExit):
        parse_args(["world", "train", "--data", "d", "--stop-after", "0"])  # the same check everywhere


def test_a_default_warmup_adapts_to_a_short_run_and_a_given_one_is_refused(capsys):
    config = from_options(PretrainConfig, {"steps": 6}, "test")
    config.check()
    assert config.warmup == 0 and "--warmup 20 (the default) is more than a tenth of --steps 6; using 0" in \
        capsys.readouterr().err
    config = from_options(PretrainConfig, {"steps": 100}, "test")
    config.check()
    assert config.warmup == 10
    assert main(["pretrain", "--steps", "6", "--warmup", "20", "--out", "/nonexistent/x"]) == 2
    assert "--warmup 20 is longer than the run (--steps 6)" in capsys.readouterr().err
