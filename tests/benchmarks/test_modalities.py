"""The vision probe, spoken digits and joint-mixture benchmarks, at tiny sizes."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parents[2] / "benchmarks"


def test_vision_probe_compares_real_and_zeroed_images(tmp_path):
    from quatrix import QuatrixLM
    from quatrix.tokenizer import train_tokenizer
    from tests.conftest import tiny_config

    tokenizer = train_tokenizer(["From left to right: a large red circle. Question: how many? Answer: 2."] * 5, 300)
    QuatrixLM(tiny_config(vocab_size=tokenizer.vocab_size, use_vision=True)).save_pretrained(tmp_path)
    tokenizer.save(tmp_path)
    out = subprocess.run([sys.executable, str(BENCH / "vision_probe.py"), str(tmp_path), "--batch", "4"],
                         capture_output=True, text=True, check=True).stdout
    row = out.splitlines()[-1].split("|")
    real, zeroed = float(row[2]), float(row[3])
    assert real != zeroed  # an untrained encoder still changes the loss: the probe can tell


def test_spoken_digits_benchmark_reports_every_baseline(tmp_path):
    out = subprocess.run([sys.executable, str(BENCH / "spoken_digits.py"), "--out", str(tmp_path), "--clips", "32",
                          "--pretrain-steps", "4", "--sft-steps", "2", "--eval-n", "4", "--vocab-size", "300"],
                         capture_output=True, text=True, check=True).stdout
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r.split("|")[1].strip() for r in rows[1:]] == [
        "model (held-out voices)", "same model, audio zeroed", "most frequent transcript", "random training transcript"]
    assert (tmp_path / "results.json").is_file()


def test_joint_mixture_benchmark_compares_with_text_only_runs(tmp_path):
    out = subprocess.run([sys.executable, str(BENCH / "joint_mixture.py"), "--out", str(tmp_path), "--steps", "12",
                          "--episodes", "4", "--clips", "32", "--vocab-size", "300", "--seed", "4"],
                         capture_output=True, text=True, check=True).stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["val_loss"]) == {"joint", "text-equal", "text-steps"}
    assert results["text_steps"] == sum(json.loads(line)["source"] == "text"
                                        for line in (tmp_path / "joint" / "metrics.jsonl").read_text().splitlines())
    assert set(results["joint_final_train_loss"]) <= {"text", "image", "audio", "world"}
    assert "text only, same text tokens" in out and "world model: mse" in out
