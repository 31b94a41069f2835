"""Recipes: the Berry recipe as data, one JSON file per preset (src/quatrix/recipes/).

A recipe names a preset and gives each stage its options:

  tokenizer  {"data": [...], "vocab_size": N} to train a BPE, or {"name": "gpt2"}
  pretrain   options of `quatrix pretrain` (steps, batch_size, data, image_data, mixture, ...)
  sft        options of `quatrix sft` (data, audio_data, weights, steps, ...)
  grpo       options of `quatrix grpo` (task, steps, prompts_per_step, ...)
  eval       perplexity_data, perplexity_batches, math_task, n, max_new_tokens, visual_qa, transcribe
  samples    text_prompt, chat_prompt, max_new_tokens

Option names are the stages' own flags with underscores (`--batch-size` is batch_size);
`quatrix run berry --print-recipe` prints the resolved recipe, which can be copied, edited
and passed back with `--recipe FILE`. The runner sets what links the stages (`out`,
`init`, `tokenizer`, `preset`, `resume`), so a recipe may not. A bad field is refused with
its name before anything runs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from importlib import resources
from pathlib import Path
from typing import Any

STAGES = ("tokenizer", "pretrain", "sft", "grpo", "eval", "samples")
TRAINING = ("pretrain", "sft", "grpo")
TOP_LEVEL = {"name", "description", "preset", "needs_gpu", "expected_seconds", *STAGES}
LINKS = {"out", "init", "tokenizer", "preset", "resume", "config", "stop_after"}  # the runner's to set
EVAL_FIELDS = {"perplexity_data": list, "perplexity_batches": int, "math_task": str, "n": int, "max_new_tokens": int,
               "visual_qa": bool, "transcribe": (str, type(None))}
SAMPLE_FIELDS = {"text_prompt": str, "chat_prompt": str, "max_new_tokens": int}


def recipe_names() -> list[str]:
    return sorted(p.name.removesuffix(".json") for p in resources.files("quatrix").joinpath("recipes").iterdir()
                  if p.name.endswith(".json"))


def load_recipe(preset: str | None = None, path: str | Path | None = None) -> dict[str, Any]:
    """The recipe in `path`, or the built-in one of `preset`; validated."""
    if path is not None:
        where = Path(path)
        if not where.is_file():
            raise FileNotFoundError(f"recipe file not found: {where}")
        text = where.read_text()
    else:
        if preset not in recipe_names():
            raise ValueError(f"no built-in recipe for preset {preset!r}; recipes: {', '.join(recipe_names())}")
        where = Path(f"{preset}.json")
        text = resources.files("quatrix").joinpath("recipes", f"{preset}.json").read_text()
    try:
        recipe = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e})") from None
    validate(recipe, str(where))
    return recipe


def validate(recipe: Any, where: str = "recipe") -> None:
    """Raise ValueError naming the first bad field."""
    from quatrix.config import PRESETS

    if not isinstance(recipe, dict):
        raise ValueError(f"{where}: a recipe is a JSON object")
    unknown = sorted(set(recipe) - TOP_LEVEL)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; a recipe has {sorted(TOP_LEVEL)}")
    missing = [k for k in ("preset", *STAGES) if k not in recipe]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}")
    if recipe["preset"] not in PRESETS:
        raise ValueError(f"{where}: preset: unknown preset {recipe['preset']!r}; choose from {sorted(PRESETS)}")
    for stage in STAGES:
        if not isinstance(recipe[stage], dict):
            raise ValueError(f"{where}: {stage}: expected an object of options")
    expected = recipe.get("expected_seconds", {})
    if not isinstance(expected, dict) or any(k not in STAGES or not isinstance(v, (int, float)) or v < 0
                                             for k, v in expected.items()):
        raise ValueError(f"{where}: expected_seconds: expected {{stage: seconds}} for stages {STAGES}")
    tok = recipe["tokenizer"]
    if set(tok) == {"name"}:
        if not isinstance(tok["name"], str):
            raise ValueError(f"{where}: tokenizer.name: expected a string ('gpt2' or a directory)")
    elif set(tok) - {"data", "vocab_size"} or "data" not in tok:
        raise ValueError(f"{where}: tokenizer: expected {{\"data\": [...], \"vocab_size\": N}} or {{\"name\": ...}}, "
                         f"got fields {sorted(tok)}")
    elif not isinstance(tok["data"], list) or not isinstance(tok.get("vocab_size", 4096), int):
        raise ValueError(f"{where}: tokenizer: data is a list of corpora, vocab_size an integer")
    for stage in TRAINING:
        _check_stage_options(stage, recipe[stage], where)
    for stage, fields in (("eval", EVAL_FIELDS), ("samples", SAMPLE_FIELDS)):
        for key, value in recipe[stage].items():
            if key not in fields:
                raise ValueError(f"{where}: {stage}.{key}: unknown field; {stage} has {sorted(fields)}")
            if not isinstance(value, fields[key]) or isinstance(value, bool) and fields[key] is int:
                raise ValueError(f"{where}: {stage}.{key}: expected {_type_name(fields[key])}, got {value!r}")


def _type_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)


def _check_stage_options(stage: str, options: dict, where: str) -> None:
    """Every option must be one of the stage's flags, and parse as that flag does."""
    from quatrix.cli import build_parser

    parser = _subparser(build_parser(), stage)
    known = {a.dest for a in parser._actions if a.dest != "help"}
    for key in options:
        if key in LINKS:
            raise ValueError(f"{where}: {stage}.{key}: set by the recipe runner, not the recipe")
        if key not in known:
            raise ValueError(f"{where}: {stage}.{key}: unknown field; `quatrix {stage}` has no --{key.replace('_', '-')}")
    required = {"sft": ["--init", "X"], "grpo": ["--init", "X"]}.get(stage, [])
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            parser.parse_args(stage_flags(options) + required)
    except SystemExit:
        message = errors.getvalue().strip().splitlines()[-1] if errors.getvalue().strip() else "invalid options"
        raise ValueError(f"{where}: {stage}: {message.split('error: ', 1)[-1]}") from None


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def stage_flags(options: dict[str, Any]) -> list[str]:
    """{"batch_size": 16, "data": ["a", "b"], "savo": true} -> ["--batch-size", "16", "--data", "a",
    "--data", "b", "--savo"]: lists repeat their flag, true is a bare flag, false and null are left out."""
    argv: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, list):
            for item in value:
                argv += [flag, str(item)]
        else:
            argv += [flag, str(value)]
    return argv
