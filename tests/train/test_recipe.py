import json

import pytest

from quatrix.cli import main
from quatrix.train.recipe import load_recipe, recipe_names, validate


@pytest.mark.parametrize("name", recipe_names())
def test_every_built_in_recipe_is_valid(name):
    recipe = load_recipe(name)
    validate(recipe, f"{name}.json")
    assert set(recipe["expected_seconds"]) == {"tokenizer", "pretrain", "sft", "grpo", "eval", "samples"}


def test_print_recipe_round_trips(capsys, tmp_path):
    assert main(["run", "berry", "--preset", "tiny", "--print-recipe"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == load_recipe("tiny")
    (tmp_path / "r.json").write_text(json.dumps(printed))
    assert load_recipe(path=tmp_path / "r.json") == printed


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["pretrain"].update(stepz=5), r"pretrain.stepz: unknown field"),
    (lambda r: r["pretrain"].update(steps="many"), r"pretrain.steps: expected an integer, got 'many'"),
    (lambda r: r["sft"].update(out="x"), r"sft.out: set by the recipe runner"),
    (lambda r: r.update(colour="red"), r"unknown field\(s\) \['colour'\]"),
    (lambda r: r.pop("grpo"), r"missing field\(s\) \['grpo'\]"),
    (lambda r: r["eval"].update(n="ten"), r"eval.n: expected int"),
    (lambda r: r["eval"].update(n={"maths": 5}), r"eval.n.maths: unknown task"),
    (lambda r: r["eval"].update(n={"math": 0}), r"eval.n.math: expected a positive integer, got 0"),
    (lambda r: r["samples"].update(voice=1), r"samples.voice: unknown field"),
    (lambda r: r.update(preset="huge"), r"preset: unknown preset 'huge'"),
    (lambda r: r["tokenizer"].update(size=3), r"tokenizer: expected"),
])
def test_a_bad_recipe_names_the_field(edit, message):
    recipe = load_recipe("tiny")
    edit(recipe)
    with pytest.raises(ValueError, match=message):
        validate(recipe, "bad.json")
