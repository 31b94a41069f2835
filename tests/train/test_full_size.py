"""The full-size model (`berry-q0`: GPT-2's vocabulary, vision on, chunked loss, checkpointing)
trains on a prepared corpus and resumes exactly. benchmarks/full_size.py runs it longer."""

import json
import math

import pytest
from safetensors.torch import load_file

from quatrix.cli import main
from quatrix.data.prepare import prepare
from quatrix.tokenizer import load_tokenizer

WORDS = "the of and to in a is that for it as was with be by on not he this are or his from at".split()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    import numpy as np

    root = tmp_path_factory.mktemp("full_size")
    rng = np.random.default_rng(0)
    docs = [" ".join(rng.choice(WORDS, rng.integers(20, 200))) + "." for _ in range(400)]
    (root / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    prepare([str(root / "docs.jsonl")], "gpt2", root / "prepared", val_fraction=0.05)
    return root


def run(root, out, *extra):
    return main(["pretrain", "--preset", "berry-q0", "--data", str(root / "prepared"), "--image-data", "clevr",
                 "--grad-checkpointing", "--precision", "fp32", "--steps", "4", "--batch-size", "2", "--seq-len", "32",
                 "--lr", "3e-3", "--warmup", "1", "--eval-every", "2", "--eval-batches", "1", "--save-every", "2",
                 "--sample-tokens", "0", "--quiet", "--out", str(root / out), *extra])


def records(root, out):
    return [json.loads(line) for line in (root / out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_berry_q0_trains_and_resumes_exactly(prepared):
    assert run(prepared, "straight") == 0
    straight = records(prepared, "straight")
    config = json.loads((prepared / "straight" / "run_config.json").read_text())["model"]
    assert config["vocab_size"] == load_tokenizer("gpt2").vocab_size and config["hidden_size"] == 512
    assert config["use_vision"] and config["num_layers"] == 7
    val = [r["val_loss"] for r in straight if "val_loss" in r]
    assert len(val) == 2 and val[1] < min(val[0], math.log(config["vocab_size"]))  # below uniform, falling
    assert run(prepared, "killed", "--stop-after", "3") == 0  # dies after step 3; last checkpoint: step 2
    assert run(prepared, "killed", "--resume") == 0
    assert [r["loss"] for r in records(prepared, "killed")] == [r["loss"] for r in straight]
    weights = [load_file(prepared / out / "checkpoint" / "model.safetensors") for out in ("straight", "killed")]
    assert weights[0].keys() == weights[1].keys()
    assert all(weights[0][k].equal(weights[1][k]) for k in weights[0])
