"""visual_qa through every stage that takes a task: SFT, GRPO and eval, on a tiny vision model."""

import json

import pytest

from quatrix import QuatrixLM
from quatrix.cli import main
from quatrix.tokenizer import load_tokenizer
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def vision_checkpoint(chat_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("vision_checkpoint")
    tokenizer = load_tokenizer(chat_checkpoint)
    QuatrixLM(tiny_config(vocab_size=tokenizer.vocab_size, max_seq_len=128, use_vision=True)).save_pretrained(root)
    tokenizer.save(root)
    return root


def test_visual_qa_trains_and_evaluates_at_the_model_image_size(vision_checkpoint, tmp_path, capsys):
    common = ["--steps", "2", "--eval-every", "2", "--save-every", "2", "--precision", "fp32"]
    assert main(["sft", "--init", str(vision_checkpoint), "--data", "task:visual_qa", "--batch-size", "4",
                 "--seq-len", "128", "--warmup", "1", "--eval-n", "4", "--sample-tokens", "0",
                 "--out", str(tmp_path / "sft"), *common]) == 0
    assert main(["grpo", "--init", str(tmp_path / "sft" / "checkpoint"), "--task", "visual_qa",
                 "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "4", "--eval-n", "4",
                 "--out", str(tmp_path / "grpo"), *common]) == 0
    capsys.readouterr()
    assert main(["eval", "--ckpt", str(tmp_path / "grpo" / "checkpoint"), "--task", "visual_qa", "--n", "10",
                 "--max-new-tokens", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["accuracy_by_kind"]) <= {"count", "colour", "shape", "exists", "position"}
    assert len(result["accuracy_by_kind"]) >= 3
