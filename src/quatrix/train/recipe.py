"""Recipes: the Berry recipe as data, one JSON file per preset (src/quatrix/recipes/).

A recipe names a preset and gives each stage its options:

  tokenizer  {"data": [...], "vocab_size": N} to train a BPE, or {"name": "gpt2"}
  pretrain   options of `quatrix pretrain` (steps, batch_size, data, image_data, mixture, ...)
  sft        options of `quatrix sft` (data, audio_data, weights, steps, ...)
  grpo       options of `quatrix grpo` (task, steps, prompts_per_step, ...)
  eval       perplexity_data, perplexity_batches, math_task, n (held-out items: one number, or
             {"math": N, "visual_qa": N, "transcribe": N}), max_new_tokens, visual_qa, transcribe
  samples    text_prompt, chat_prompt, max_new_tokens

Option names are the fields of the stages' typed configs (PretrainConfig, SFTConfig,
GRPOConfig), which are also their flags (`batch_size` is `--batch-size`), and each is
checked by the same parse as the flag;
`quatrix run berry --print-recipe` prints the resolved recipe, which can be copied, edited
and passed back with `--recipe FILE`. The runner sets what links the stages (`out`,
`init`, `tokenizer`, `preset`, `resume`), so a recipe may not. A bad field is refused with
its name before anything runs.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from quatrix.config import PRESETS
from quatrix.train.grpo import GRPOConfig
from quatrix.train.options import from_options, to_argv
from quatrix.train.pretrain import PretrainConfig
from quatrix.train.sft import SFTConfig

STAGES = ("tokenizer", "pretrain", "sft", "grpo", "eval", "samples")
TRAINING = ("pretrain", "sft", "grpo")
TOP_LEVEL = {"name", "description", "preset", "needs_gpu", "expected_seconds", *STAGES}
LINKS = frozenset({"out", "init", "tokenizer", "preset", "resume", "config", "stop_after"})  # the runner's to set
STAGE_CONFIGS = {"pretrain": PretrainConfig, "sft": SFTConfig, "grpo": GRPOConfig}
EVAL_FIELDS = {"perplexity_data": list, "perplexity_batches": int, "math_task": str, "n": (int, dict), "max_new_tokens": int,
               "visual_qa": bool, "transcribe": (str, type(None))}
EVAL_TASKS = ("math", "visual_qa", "transcribe")
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
    _check_eval_n(recipe["eval"].get("n", 200), where)


def _check_eval_n(n, where: str) -> None:
    counts = n.items() if isinstance(n, dict) else [("", n)]
    for task, count in counts:
        if task not in ("", *EVAL_TASKS):
            raise ValueError(f"{where}: eval.n.{task}: unknown task; eval.n names {list(EVAL_TASKS)}")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError(f"{where}: eval.n{'.' + task if task else ''}: expected a positive integer, got {count!r}")


def _type_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)


def _check_stage_options(stage: str, options: dict, where: str) -> None:
    """Every option must be a field of the stage's config, and parse as its flag does."""
    from_options(STAGE_CONFIGS[stage], options, f"{where}: {stage}", reserved=LINKS)


def stage_flags(options: dict[str, Any]) -> list[str]:
    """A stage's options as its command line (quatrix.train.options.to_argv)."""
    return to_argv(options)
