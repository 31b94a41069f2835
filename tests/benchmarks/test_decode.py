"""benchmarks/decode.py: the cache table, the bandwidth bound, each Inductor setting, the profile."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[2] / "benchmarks"


@pytest.mark.slow
def test_decode_benchmark_runs_and_checks_tokens():
    out = subprocess.run(
        [sys.executable, str(BENCH / "decode.py"), "--cache-table", "--preset", "tiny", "--prompt-len", "16",
         "--new-tokens", "4", "--batch", "2"],
        capture_output=True, text=True, check=True,
    ).stdout
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ") and "---" not in line}
    assert set(rows) >= {"qcompass", "savo", "mha"}
    assert "| True |" in rows["qcompass"]  # cached and recomputed greedy tokens agree
    assert rows["qcompass"].split("|")[2].strip() == str(128 + 32)  # tiny: H + r floats per token


@pytest.mark.slow
def test_decode_benchmark_reports_the_bandwidth_bound(tmp_path):
    out = subprocess.run(
        [sys.executable, str(BENCH / "decode.py"), "--preset", "tiny", "--prompt-len", "8", "--new-tokens", "4",
         "--variants", "qcompass,mha", "--batches", "1", "--steps", "eager", "--out", str(tmp_path / "rows.json")],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "| read GB/s |" in out
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [(r["mixer"], r["weights"]) for r in rows] == [("qcompass", "fp32"), ("qcompass", "bf16"), ("mha", "fp32"),
                                                          ("mha", "bf16")]
    assert all(r["bound"] > 0 and r["fraction"] == r["tokens_per_s"] / r["bound"] for r in rows)
    for r in rows:  # the median of five (bandwidth, generation) pairs, by fraction of the bound
        fractions = sorted(e["tokens_per_s"] / e["bandwidth"] for e in r["each"])
        assert len(fractions) == 5 and r["tokens_per_s"] / r["bandwidth"] == fractions[2]
    assert [r["same_tokens"] for r in rows] == [True, None, True, None]  # fp32: cached == recomputed greedy tokens
    assert "At the run's median bandwidth" in out and all(r["ratio"] == 1.0 for r in rows)
    median = sorted(e["bandwidth"] for r in rows for e in r["each"])[9:11]  # 20 readings
    for r in rows:
        rate = sorted(e["tokens_per_s"] for e in r["each"])[2]
        assert r["fraction_at_run_median"] == pytest.approx(rate * r["bytes_per_step"] / (sum(median) / 2))


@pytest.mark.slow
def test_decode_benchmark_holds_the_compiled_step_to_each_inductor_setting(tmp_path):
    run = [sys.executable, str(BENCH / "decode.py"), "--preset", "tiny", "--prompt-len", "8", "--new-tokens", "4",
           "--variants", "qcompass", "--dtypes", "fp32", "--batches", "1"]
    subprocess.run(run + ["--steps", "frozen,cpp,compiled,guarded", "--out", str(tmp_path / "rows.json")],
                   capture_output=True, text=True, check=True)
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [r["step"] for r in rows] == ["frozen", "cpp", "compiled", "guarded"]
    assert [r["same_tokens"] for r in rows] == [True] * 4  # recomputation, then the frozen step's tokens
    frozen, cpp = {"freezing": True}, {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP"}
    picked = [cpp | {"cpp.enable_concat_linear": True}, frozen]  # the template, then without
    assert [r["inductor"] for r in rows] == [[frozen], [cpp], picked, picked]
    assert rows[0]["ratio"] == 1.0 and all(r["ratio"] > 0 for r in rows)  # each against the frozen step, per round
    bad = subprocess.run(run + ["--steps", "eager,turbo"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown --steps turbo" in bad.stderr


@pytest.mark.slow
def test_decode_benchmark_profiles_the_compiled_step_kernel_by_kernel():
    out = subprocess.run(
        [sys.executable, str(BENCH / "decode.py"), "--profile", "--preset", "tiny", "--dtype", "fp32",
         "--new-tokens", "5", "--step", "guarded"], capture_output=True, text=True, check=True,
    ).stdout
    assert "fp32, guarded step, batch 1" in out
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| ") and "kernel or op" not in line]
    assert len(rows) == 12 and any("graph_0_" in r[1] for r in rows)  # Inductor's own kernels, by name
    assert all(float(r[3]) >= 0 for r in rows)
