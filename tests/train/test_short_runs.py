"""Every training command runs with `--steps 1` and nothing else but what it must be told
(data, model, output): no default may conflict with a short run (docs: defaults adapt,
explicit values are checked)."""

import json

import numpy as np
import pytest

from conftest import TASK
from quatrix.cli import main
from quatrix.tokenizer import train_tokenizer

WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly hum".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("short")
    text = "\n".join(" ".join(np.random.default_rng(0).choice(WORDS, 8)) for _ in range(2000)) + "\n"
    (root / "corpus.txt").write_text(text)
    train_tokenizer([text], 300, root / "tok")
    return root


def _steps(out):
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_pretrain_one_step(corpus, tmp_path):
    out = tmp_path / "pretrain"
    assert main(["pretrain", "--steps", "1", "--data", str(corpus / "corpus.txt"), "--tokenizer",
                 str(corpus / "tok"), "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    assert _steps(out) == [1] and (out / "checkpoint").is_dir()


def test_sft_and_grpo_one_step(chat_checkpoint, tmp_path, capsys):
    assert main(["sft", "--init", str(chat_checkpoint), "--data", f"task:{TASK}", "--steps", "1",
                 "--out", str(tmp_path / "sft")]) == 0
    assert "--seq-len 256 (the default) is longer than the model's max_seq_len 128; using 128" in capsys.readouterr().err
    assert main(["grpo", "--init", str(tmp_path / "sft" / "checkpoint"), "--task", TASK, "--steps", "1",
                 "--out", str(tmp_path / "grpo")]) == 0
    assert _steps(tmp_path / "sft") == [1] and _steps(tmp_path / "grpo") == [1]


def test_world_train_one_step(tmp_path):
    from quatrix.data.world import collect

    collect("MiniGrid-Empty-5x5-v0", 12, tmp_path / "world", seed=0, image_size=16, max_steps=10)
    assert main(["world", "train", "--data", str(tmp_path / "world"), "--steps", "1", "--out",
                 str(tmp_path / "run")]) == 0
    assert _steps(tmp_path / "run") == [1]


def test_ablate_one_step(corpus, tmp_path):
    assert main(["ablate", "--variants", "qcompass", "--reference", "qcompass", "--seeds", "0", "--steps", "1",
                 "--data", str(corpus / "corpus.txt"), "--tokenizer", str(corpus / "tok"),
                 "--out", str(tmp_path / "ablate")]) == 0
    assert (tmp_path / "ablate" / "results.md").is_file()
