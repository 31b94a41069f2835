import os

import pytest
import torch

from quatrix import QuatrixConfig
from quatrix.precision import DTYPE_ENV
from quatrix.variants import VARIANTS

# Commands not given --dtype load fp32 weights in every test, subprocesses included, whether or
# not this machine computes bf16 natively (tests/test_precision.py covers the automatic choice).
os.environ[DTYPE_ENV] = "fp32"

# `make test` runs the suite in pytest-xdist workers, one per core, each computing on one thread
# (subprocesses included): two-thread workers would oversubscribe the cores, and a run on one
# thread sums in one order whatever the machine's load (docs/results.md, "A drift under load").
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

# Every model variant of the registry: (name, config overrides), multi-head ones with 4 heads.
MIXER_VARIANTS = [(name, variant.overrides(4)) for name, variant in VARIANTS.items()]


def tiny_config(**overrides) -> QuatrixConfig:
    base = dict(vocab_size=97, hidden_size=32, num_layers=2, max_seq_len=64, q_rank=16,
                image_size=32, patch_size=8, vision_hidden_size=24, vision_q_rank=8, vision_layers=1,
                audio_hidden_size=24, audio_q_rank=8, audio_layers=1, audio_max_seconds=1.0,
                world_image_size=16, world_patch_size=4, world_hidden_size=24, world_q_rank=8, world_layers=1)
    return QuatrixConfig(**{**base, **overrides})


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


TASK = "chain_sum:min_terms=2,max_terms=2,max_digits=1"  # the small task the stage tests train on


@pytest.fixture(scope="session")
def chat_checkpoint(tmp_path_factory):
    """A tiny model saved with a small BPE tokenizer that knows the chat format and TASK's
    text: what `quatrix sft`, `grpo`, `eval --task` and `chat` take as --init / --ckpt."""
    from quatrix import QuatrixLM
    from quatrix.tasks import task_from_spec
    from quatrix.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("chat_checkpoint")
    task = task_from_spec(TASK)
    texts, index = [], 0
    for _ in range(200):
        item, index = task.train_item(index)
        texts += [item.question, task.target(item), task.prompt(item)[0]["content"]]
    tokenizer = train_tokenizer(texts + ["hello there, how are you today? I am fine."] * 5, 320)
    model = QuatrixLM(tiny_config(vocab_size=tokenizer.vocab_size, max_seq_len=128))
    model.save_pretrained(root)
    tokenizer.save(root)
    return root


def piped_chat(ckpt, stdin: str, *extra):
    """`quatrix chat` in a child process, its user turns and commands piped in; greedy, 6 new tokens."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "quatrix.cli", "chat", "--ckpt", str(ckpt), "--max-new-tokens", "6",
                           "--temperature", "0", *extra], input=stdin, capture_output=True, text=True, timeout=120)


def sft_grpo_eval(init, out, capsys, *, sft_args: list[str], task: str, seq_len: int, n: int) -> dict:
    """Two SFT steps from `init`, two GRPO steps on `task` from that, then `quatrix eval
    --task --json` of the result: its JSON. The stages write under `out` (sft/, grpo/)."""
    import json

    from quatrix.cli import main

    common = ["--steps", "2", "--eval-every", "2", "--save-every", "2", "--precision", "fp32"]
    assert main(["sft", "--init", str(init), *sft_args, "--batch-size", "4", "--seq-len", str(seq_len),
                 "--warmup", "1", "--eval-n", "4", "--sample-tokens", "0", "--out", str(out / "sft"), *common]) == 0
    assert main(["grpo", "--init", str(out / "sft" / "checkpoint"), "--task", task, "--prompts-per-step", "2",
                 "--group-size", "2", "--max-new-tokens", "4", "--eval-n", "4", "--out", str(out / "grpo"),
                 *common]) == 0
    capsys.readouterr()
    assert main(["eval", "--ckpt", str(out / "grpo" / "checkpoint"), "--task", task, "--n", str(n),
                 "--max-new-tokens", "4", "--json"]) == 0
    return json.loads(capsys.readouterr().out)
