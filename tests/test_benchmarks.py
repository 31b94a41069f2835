import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parent.parent / "benchmarks"
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
    import json

    subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--device", "cpu", "--quick", "--out", str(tmp_path)],
                   capture_output=True, text=True, check=True)
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["failed"] == 0 and len(summary["checks"]) == 40
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
    import json

    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["val_loss"]) == {"joint", "text-equal", "text-steps"}
    assert results["text_steps"] == sum(json.loads(line)["source"] == "text"
                                        for line in (tmp_path / "joint" / "metrics.jsonl").read_text().splitlines())
    assert set(results["joint_final_train_loss"]) <= {"text", "image", "audio", "world"}
    assert "text only, same text tokens" in out and "world model: mse" in out


def berry_run(root, checkpoint, max_new_tokens: int = 4):
    """What a `quatrix run berry` folder holds for the benchmarks that read one: its recipe and
    the GRPO checkpoint (here the tests' tiny chat checkpoint)."""
    import json
    import shutil

    from tests.conftest import TASK

    shutil.copytree(checkpoint, root / "grpo" / "checkpoint")
    (root / "recipe.json").write_text(json.dumps({"eval": {"math_task": TASK, "max_new_tokens": max_new_tokens}}))
    return root


def test_lm_eval_benchmark_scores_the_run_as_quatrix_does(chat_checkpoint, tmp_path):
    pytest.importorskip("lm_eval", reason="the [eval] extra (lm-eval) is not installed")
    pytest.importorskip("fastapi", reason="the [serve] extra (fastapi, uvicorn) is not installed")
    run = berry_run(tmp_path / "run", chat_checkpoint)
    out = subprocess.run([sys.executable, str(BENCH / "lm_eval_berry.py"), str(run), "--out", str(tmp_path / "out"),
                          "--n", "6", "--lines", "4"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    ways = json.loads((tmp_path / "out" / "results.json").read_text())["ways"]
    assert len(ways) == 2
    for way in ways.values():
        assert way["math"]["items_scored_alike"] == way["math"]["n"] == 6
        assert way["math"]["harness_exact_match"] == way["math"]["quatrix_accuracy"]
        assert way["lines"]["n"] == 4 and way["lines"]["largest_loglikelihood_difference"] < 1e-4
        assert way["lines"]["harness_acc"] == way["lines"]["quatrix_acc"]


def test_finetune_export_benchmark_trains_full_and_lora(chat_checkpoint, tmp_path):
    pytest.importorskip("trl", reason="the [hf] extra (transformers, peft, trl) is not installed")
    run = berry_run(tmp_path / "run", chat_checkpoint)
    out = subprocess.run([sys.executable, str(BENCH / "finetune_export.py"), str(run), "--out", str(tmp_path / "out"),
                          "--task", "chain_sum:min_terms=3,max_terms=3,max_digits=1", "--steps", "3",
                          "--batch-size", "4", "--n-eval", "4", "--max-new-tokens", "4"],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    assert result["full"]["trainable"] == result["full"]["total"]
    assert 0 < result["lora"]["trainable"] < result["lora"]["total"] // 4
    for name in ("full", "lora"):
        assert result[name]["after"]["eval_loss"] < result[name]["before"]["eval_loss"]  # 3 steps on the same task
    assert "| PEFT LoRA, all-linear, r=8 |" in out.stdout


def test_serve_load_benchmark_runs_and_reports_parity(tmp_path):
    pytest.importorskip("fastapi", reason="the [serve] extra (fastapi, uvicorn) is not installed")
    out = subprocess.run(
        [sys.executable, str(BENCH / "serve_load.py"), "--clients", "3", "--requests", "6", "--max-tokens", "4",
         "--parity", "5", "--hidden", "32", "--layers", "1", "--rank", "8", "--vocab", "300", "--context", "64",
         "--max-batch", "4", "--mixers", "qcompass", "--json", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    import json

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


@pytest.mark.parametrize("script", ["lm_eval_berry.py", "finetune_export.py"])
def test_run_benchmarks_name_a_folder_that_is_not_a_finished_run(script, tmp_path):
    done = subprocess.run([sys.executable, str(BENCH / script), str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "not found: RUN must be a finished `quatrix run berry" in done.stderr
    assert "Traceback" not in done.stderr
