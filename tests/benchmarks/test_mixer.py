"""The mixer, training-throughput, GPU-check and rollout-cache benchmarks, at tiny sizes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from quatrix.variants import VARIANTS

BENCH = Path(__file__).parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))
import mixer  # noqa: E402


def test_flop_model_matches_design_counts():
    B, L, H, r = 1, 1024, 384, 48
    pairs = L * L / 2
    assert mixer.train_flops("mha", B, L, H, r) == 3 * (8 * L * H * H + 4 * pairs * H)
    assert mixer.train_flops("qcompass", B, L, H, r) == 3 * (2 * L * H * (2 * r + H) + 2 * pairs * (r + H))
    ratio = mixer.train_flops("mha", B, L, H, r) / mixer.train_flops("qcompass", B, L, H, r)
    assert 2.3 < ratio < 2.5  # SAO's FLOP advantage at the paper's Table 10 size
    assert mixer.train_flops("mha", B, L, H, r) / mixer.train_flops("savo", B, L, H, r) > 8


@pytest.mark.slow
def test_benchmark_runs_and_prints_ratios():
    out = subprocess.run(
        [sys.executable, str(BENCH / "mixer.py"), "--length", "64", "--batch", "1", "--hidden", "32", "--rank", "8",
         "--rounds", "1", "--warmup", "0", "--variants", "qcompass,mha"],
        capture_output=True, text=True, check=True,
    ).stdout
    rows = [line for line in out.splitlines() if line.startswith("| Q-Compass") or line.startswith("| attention")]
    assert len(rows) == 2 and "1.00x" in rows[1]


@pytest.mark.slow
def test_train_throughput_benchmark_reports_mfu():
    out = subprocess.run(
        [sys.executable, str(BENCH / "train_throughput.py"), "--preset", "tiny", "--batch-size", "2", "--seq-len", "32",
         "--steps", "1", "--warmup", "0", "--variants", "qcompass,mha"],
        capture_output=True, text=True, check=True,
    ).stdout
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| qcompass") or line.startswith("| mha")]
    assert [(r[1].strip(), r[2].strip()) for r in rows] == [("qcompass", "fp32"), ("qcompass", "bf16"),
                                                            ("mha", "fp32"), ("mha", "bf16")]
    assert all(r[7].strip() == "1.00x" for r in rows[2:])  # mha against itself
    assert all(r[6].strip().endswith("%") for r in rows) and rows[1][9].strip().endswith("x")


@pytest.mark.slow
def test_gpu_check_script_runs_its_checks_on_cpu(tmp_path):
    """The GPU check is smoke-tested here on CPU at tiny sizes, so it is ready when a GPU is lent."""
    subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--device", "cpu", "--quick", "--out", str(tmp_path)],
                   capture_output=True, text=True, check=True)
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    decoding = [c for c in summary["checks"] if c["check"] == "decode"]
    assert summary["failed"] == 0 and len(summary["checks"]) - len(decoding) == 28
    assert len(decoding) == 2 * len(VARIANTS)  # cached against recomputed decoding: every variant, fp32 and bf16
    assert {c["impl"] for c in summary["checks"] if c["check"] == "mixer"} == {"sdpa", "matmul", "chunked"}
    assert "| qcompass | bf16 |" in summary["train_throughput"] and "Q-Compass" in summary["mixer_benchmark"]
    assert (tmp_path / "gpu_check.md").read_text().startswith("# GPU check")


def test_rollout_cache_benchmark_reports_the_cache_ratios():
    out = subprocess.run(
        [sys.executable, str(BENCH / "rollout_cache.py"), "--prompts", "2", "--group-size", "2", "--prompt-len", "8",
         "--max-new-tokens", "2", "--repeats", "1"],
        capture_output=True, text=True, check=True,
    ).stdout
    rows = {line.split("|")[1].strip(): line.split("|") for line in out.splitlines()
            if line.startswith("| ") and "---" not in line and "variant" not in line}
    assert rows["Q-Compass (SAO)"][2].strip() == "160" and rows["SAVO"][5].strip() == "0.25x"  # (H+r), 2r / 2H
