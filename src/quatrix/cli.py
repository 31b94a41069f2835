"""The `quatrix` command: one entry point and a registry from subcommand to the module that
owns it. Each module has `add_arguments(parser)` and `main(args) -> exit status`; modules are
imported only for the command that runs (and for `--help`). Importing this module does not
import torch, so the worker processes `quatrix data prepare` spawns (which re-import the main
module) start in a fraction of a second."""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module with add_arguments / main, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("quatrix.commands.data", "prepare a corpus: tokenize text files into shards for pretrain --data DIR"),
    "memory": ("quatrix.commands.memory", "peak training memory of one step, predicted (and measured), and the largest micro-batch that fits"),
    "info": ("quatrix.commands.info", "parameter breakdown and a forward pass of a preset or checkpoint"),
    "generate": ("quatrix.commands.generate", "stream a continuation of a prompt (text, or token ids with --ids)"),
    "pretrain": ("quatrix.train.pretrain", "pretrain a language model on text (stage 1)"),
    "eval": ("quatrix.commands.evaluate", "perplexity of a checkpoint on a corpus, or its accuracy on a task"),
    "sft": ("quatrix.train.sft", "supervised finetuning on conversations (stage 2)"),
    "grpo": ("quatrix.train.grpo", "GRPO on a task with verifiable answers (stage 3)"),
    "chat": ("quatrix.commands.chat", "talk to a checkpoint (one user turn per line from a pipe)"),
    "world": ("quatrix.commands.world", "world-model data from gymnasium / MiniGrid environments"),
    "tasks": ("quatrix.commands.tasks", "list the tasks eval, sft and grpo accept"),
    "ablate": ("quatrix.train.ablate", "multi-seed comparison of Q-Compass variants against attention"),
    "run": ("quatrix.train.berry", "a whole recipe in one command: `quatrix run berry --preset tiny` (tokenizer, "
                                   "pretraining, SFT, GRPO, evaluation, samples, report)"),
    "export": ("quatrix.commands.export", "write a checkpoint in another format: `quatrix export hf`"),
    "serve": ("quatrix.serve.main", "an OpenAI-compatible HTTP API and a web chat page for a checkpoint (needs the "
                                    "[serve] extra)"),
    "tokenizer": ("quatrix.commands.tokenizer", "train a byte-level BPE tokenizer"),
}


def command_module(name: str):
    return importlib.import_module(COMMANDS[name][0])


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with `only`, the other subcommands are listed but not built."""
    parser = argparse.ArgumentParser(prog="quatrix", description="Q-Compass language models")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or name == only:
            command_module(name).add_arguments(command)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse; options from a `--config FILE.json` become defaults that flags override."""
    argv = sys.argv[1:] if argv is None else list(argv)
    only = argv[0] if argv and argv[0] in COMMANDS else None
    parser = build_parser(only)
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        from quatrix.train.options import apply_config_file  # here: importing cli stays light (no torch)

        subparser = parser._subparsers._group_actions[0].choices[args.command]
        args = apply_config_file(parser, subparser, argv, args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return command_module(args.command).main(args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"quatrix {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: no traceback; training stages continue with --resume
        print(f"\nquatrix {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
