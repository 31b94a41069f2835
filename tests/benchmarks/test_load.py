"""The serving-load and data-preparation benchmarks: throughput of whole processes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[2] / "benchmarks"


def test_serve_load_benchmark_runs_and_reports_parity(tmp_path):
    pytest.importorskip("fastapi", reason="the [serve] extra (fastapi, uvicorn) is not installed")
    out = subprocess.run(
        [sys.executable, str(BENCH / "serve_load.py"), "--clients", "3", "--requests", "6", "--max-tokens", "4",
         "--parity", "5", "--hidden", "32", "--layers", "1", "--rank", "8", "--vocab", "300", "--context", "64",
         "--max-batch", "4", "--mixers", "qcompass", "--json", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((tmp_path / "r.json").read_text())["results"]["qcompass"]
    assert result["load"]["ok"] == 6 and result["load"]["largest_batch"] <= 4
    assert result["parity"]["prompts"] == 5 and result["parity"]["differ"] == 0


@pytest.mark.slow
def test_prepare_benchmark_counts_the_same_tokens_and_the_whole_process_tree(tmp_path):
    subprocess.run([sys.executable, str(BENCH / "prepare.py"), "--mb", "1", "--out", str(tmp_path)],
                   capture_output=True, text=True, check=True)
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["identical_shards_1_vs_2_workers"] and result["corpus_bytes"] >= 10**6
    assert len({run["tokens"] for run in result["runs"]}) == 1 and result["runs"][0]["tokens"] > 100_000
    # two workers and the main process are sampled together: more than the largest process alone
    two_workers = result["runs"][2]
    assert two_workers["peak_rss_mib"] > two_workers["largest_process_rss_mib"] > 10
