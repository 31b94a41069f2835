"""Typed stage options: each training stage declares one dataclass, and its command-line
flags, its `--config FILE` and its checks in recipes all come from that one declaration.

    @dataclass
    class SFTConfig(BatchConfig):
        init: str = option(help="checkpoint to start from", required=True)
        eval_n: int = option(64, parse=positive_int, help="held-out conversations per source")

    add_arguments(parser, SFTConfig)        # --init, --eval-n, and every shared flag
    config = from_namespace(SFTConfig, args)
    config = from_options(SFTConfig, {"eval_n": 32, "init": "x"}, where="recipe: sft")

A field is a flag named after it (`eval_n` -> `--eval-n`); a bool is a switch, a list a
repeatable flag, and `parse` (a quatrix.validation flag type) checks a value the same way
whether it comes from the command line, a `--config` file or a recipe. Fields marked
`cli=False` are resolved at run time (the precision a run trains in) and never flags.
Hand-written rather than a library (simple-parsing, tyro) because the flags are few, the
errors must name the flag, and the same parse must check recipes without argparse.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch

from quatrix.precision import PRECISIONS
from quatrix.progress import LOG_FORMATS, log_mode
from quatrix.validation import float_in, nonnegative_float, nonnegative_int, positive_float, positive_int


def option(default: Any = MISSING, *, help: str = "", parse: Callable[[str], Any] | None = None,
           choices: tuple[str, ...] | None = None, required: bool = False, cli: bool = True, hidden: bool = False,
           default_factory: Callable[[], Any] | None = None, group: str | None = None):
    """A stage option: the dataclass field and what its flag needs. `group` names a set of
    mutually exclusive flags."""
    metadata = {"help": help, "parse": parse, "choices": choices, "required": required, "cli": cli,
                "hidden": hidden, "group": group}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    if required and default is MISSING:
        default = None
    return field(default=default, metadata=metadata)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class RunConfig:
    """What every training stage takes: the schedule, checkpoints, resume, device, precision."""

    config: str | None = option(None, help="a JSON file of these options (command-line flags override it)")
    steps: int = option(100, parse=positive_int, help="optimizer steps in all")
    lr: float = option(1e-3, parse=positive_float, help="peak learning rate")
    weight_decay: float = option(0.1, parse=nonnegative_float)
    warmup: int = option(0, parse=nonnegative_int, help="linear warmup steps (at most --steps)")
    final_lr: float = option(0.1, parse=float_in(0.0, 1.0),
                             help="the learning rate the cosine decay ends at, as a fraction of --lr (1: constant "
                                  "after warmup)")
    optimizer: str = option("adamw", choices=("adamw", "muon"))
    eval_every: int = option(50, parse=nonnegative_int, help="validate every N steps and at the end (0: only at the end)")
    save_every: int = option(50, parse=nonnegative_int,
                             help="checkpoint every N steps and at the end (0: only at the end)")
    seed: int = option(0, parse=nonnegative_int)
    out: str = option("runs/out", help="the run's folder: metrics, plots, checkpoint")
    resume: bool = option(False, help="continue the run in OUT exactly, from its last checkpoint (from step 0 if "
                                      "it was killed before its first checkpoint)")
    device: str = option(default_factory=default_device, help="torch device (default: cuda if available, else cpu)")
    precision: str = option("auto", choices=PRECISIONS,
                            help="auto: bf16 autocast where the device has native bf16 (CUDA with bf16, a CPU with "
                                 "AMX or AVX-512-BF16), else fp32")
    compile: bool = option(False, help="torch.compile the model")
    grad_checkpointing: bool = option(False, help="recompute each block's activations in backward")
    quiet: bool = option(False, help="no progress lines (the end-of-stage line and errors still print)")
    log_format: str = option("text", choices=LOG_FORMATS,
                             help="progress lines as text or as JSON objects (for scripts); also QUATRIX_LOG=json")
    stop_after: int | None = option(None, parse=positive_int, hidden=True)  # tests: die here, as if killed
    # resolved at set-up, never a flag: the precision this run trains and validates in (a
    # resumed run keeps the one it began with)
    compute_precision: str | None = option(None, cli=False)
    # the options the user gave (flags, --config, a recipe): only these are ever refused;
    # a default that conflicts with them adapts instead (`adapt`)
    explicit: tuple[str, ...] = option((), cli=False)

    def given(self, name: str) -> bool:
        return name in self.explicit

    def adapt(self, name: str, value: Any, why: str) -> None:
        """Change a default the user did not give, and say so once."""
        print(f"note: {flag_name(name)} {getattr(self, name)} (the default) {why}; using {value}", file=sys.stderr)
        setattr(self, name, value)

    def check(self) -> None:
        """What the flag types cannot see alone (they already refuse 0, negative and NaN values).
        A default warmup is at most a tenth of a short run; one the user gave is refused if
        it is longer than the run."""
        if self.warmup > self.steps // 10 and not self.given("warmup"):
            self.adapt("warmup", self.steps // 10, f"is more than a tenth of --steps {self.steps}")
        if self.warmup > self.steps:
            raise ValueError(f"--warmup {self.warmup} is longer than the run (--steps {self.steps})")
        if self.resume and not Path(self.out).is_dir():
            raise FileNotFoundError(f"--resume: no run to continue at {self.out}")

    def progress_mode(self) -> str:
        """"quiet", "text" or "json": the flags where given, else QUATRIX_LOG (set by `quatrix run`)."""
        if self.quiet:
            return "quiet"
        return self.log_format if self.given("log_format") else log_mode()

    def to_dict(self) -> dict[str, Any]:
        """Every option as the run used it (what run_config.json and checkpoints record)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "explicit"}


@dataclass
class BatchConfig(RunConfig):
    """A stage whose steps are batches of a fixed shape."""

    batch_size: int = option(16, parse=positive_int, help="sequences per step per process (before accumulation)")
    grad_accum: int = option(1, parse=positive_int, help="micro-batches per optimizer step")


def default(name: str, value: Any):
    """A shared option redeclared with this stage's default; its help and checks unchanged."""
    base = {f.name: f for f in fields(BatchConfig)}[name]
    return field(default=value, metadata=base.metadata)


# ---------------------------------------------------------------------- flags
def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def cli_fields(config_cls) -> list[dataclasses.Field]:
    return [f for f in fields(config_cls) if f.metadata.get("cli", True)]


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None if f.default is MISSING else f.default


def _kind(f: dataclasses.Field) -> str:
    """"bool", "list" or "value", from the field's annotation (a string under postponed annotations)."""
    annotation = str(f.type)
    if annotation == "bool" or f.type is bool:
        return "bool"
    if annotation.startswith("list") or isinstance(_default(f), list):
        return "list"
    return "value"


def add_arguments(parser: argparse.ArgumentParser, config_cls) -> None:
    """One flag per field of `config_cls`, with its type, default, choices and help."""
    groups: dict[str, Any] = {}
    for f in cli_fields(config_cls):
        meta = f.metadata
        target = parser
        if meta.get("group"):
            if meta["group"] not in groups:
                groups[meta["group"]] = parser.add_mutually_exclusive_group()
            target = groups[meta["group"]]
        # defaults stay out of the namespace (SUPPRESS), so that a config knows which options were given
        kwargs: dict[str, Any] = {"help": argparse.SUPPRESS if meta.get("hidden") else _help(f),
                                  "default": argparse.SUPPRESS}
        kind = _kind(f)
        if kind == "bool":
            kwargs["action"] = "store_true"
        else:
            if kind == "list":
                kwargs["action"] = "append"
            if meta.get("parse"):
                kwargs["type"] = meta["parse"]
            if meta.get("choices"):
                kwargs["choices"] = meta["choices"]
            if meta.get("required"):
                kwargs["required"] = True
        target.add_argument(flag_name(f.name), **kwargs)


def _help(f: dataclasses.Field) -> str:
    text, default = f.metadata.get("help") or "", _default(f)
    if _kind(f) == "bool" or default is None or default == []:
        return text
    return f"{text} (default: {default})" if text else f"default: {default}"


def from_namespace(config_cls, args: argparse.Namespace):
    """The stage's config from parsed flags; an option not given takes its default and is not
    `explicit`."""
    values = {f.name: getattr(args, f.name) for f in cli_fields(config_cls) if hasattr(args, f.name)}
    values = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in values.items()}
    return config_cls(**values, explicit=tuple(sorted(values)))


def from_options(config_cls, options: dict[str, Any], where: str, reserved: frozenset[str] = frozenset()):
    """The stage's config from a dict of options (a recipe's stage, a --config file), each
    checked as its flag would check it. Raises ValueError naming the first bad option."""
    known = {f.name: f for f in cli_fields(config_cls)}
    values: dict[str, Any] = {}
    for key, value in options.items():
        if key in reserved:
            raise ValueError(f"{where}.{key}: set by the recipe runner, not the recipe")
        if key not in known:
            raise ValueError(f"{where}.{key}: unknown field; it has no {flag_name(key)}")
        values[key] = _checked(known[key], value, f"{where}.{key}")
    for name, f in known.items():
        if f.metadata.get("required") and values.get(name) is None and name not in reserved:
            raise ValueError(f"{where}: {flag_name(name)} is required")
    return config_cls(**values, explicit=tuple(sorted(values)))


def _checked(f: dataclasses.Field, value: Any, where: str) -> Any:
    kind, meta = _kind(f), f.metadata
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, got {value!r}")
        return value
    if value is None:
        return None
    items = value if kind == "list" else [value]
    if kind == "list" and not isinstance(value, list):
        raise ValueError(f"{where}: expected a list, got {value!r}")
    checked = []
    for item in items:
        if isinstance(item, (dict, list)) or isinstance(item, bool):
            raise ValueError(f"{where}: expected a single value, got {item!r}")
        if meta.get("choices") and str(item) not in meta["choices"]:
            raise ValueError(f"{where}: {item!r} is not one of {', '.join(meta['choices'])}")
        if meta.get("parse"):
            try:
                item = meta["parse"](str(item))
            except argparse.ArgumentTypeError as e:
                raise ValueError(f"{where}: {e}") from None
        checked.append(item)
    return checked if kind == "list" else checked[0]


def to_argv(options: dict[str, Any]) -> list[str]:
    """{"batch_size": 16, "data": ["a", "b"], "savo": true} -> ["--batch-size", "16", "--data", "a",
    "--data", "b", "--savo"]: lists repeat their flag, true is a bare flag, false and null are left out.
    The one way options become a command line (recipes, ablations)."""
    argv: list[str] = []
    for key, value in options.items():
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag_name(key))
        elif isinstance(value, (list, tuple)):
            argv += [a for item in value for a in (flag_name(key), str(item))]
        else:
            argv += [flag_name(key), str(value)]
    return argv


def command_line(command: str, options: dict[str, Any]) -> list[str]:
    """`quatrix COMMAND` as the argv of a child process, from typed options."""
    return [sys.executable, "-m", "quatrix.cli", *command.split(), *to_argv(options)]


def apply_config_file(parser: argparse.ArgumentParser, subparser: argparse.ArgumentParser, argv, args):
    """`--config FILE.json`: its options become the subcommand's defaults, which flags given on
    the command line override. Unknown options are refused with their names."""
    path = Path(args.config)
    if not path.is_file():
        parser.error(f"config file not found: {path}")
    try:
        options = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        parser.error(f"{path}: not valid JSON ({e})")
    if not isinstance(options, dict):
        parser.error(f"{path}: expected a JSON object of options")
    known = _dests(subparser)
    unknown = sorted(k for k in options if k.replace("-", "_") not in known)
    if unknown:
        parser.error(f"{path}: unknown option(s) {', '.join(unknown)}")
    subparser.set_defaults(**{k.replace("-", "_"): v for k, v in options.items()})
    return parser.parse_args(argv)


def _dests(parser: argparse.ArgumentParser) -> set[str]:
    """Every option a parser (and its subcommands) takes."""
    dests = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                dests |= _dests(sub)
        elif action.dest != "help":
            dests.add(action.dest)
    return dests
