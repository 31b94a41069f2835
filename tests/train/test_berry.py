"""`quatrix run berry` on a micro recipe: every stage, the report, resume, bad recipes."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from quatrix.cli import main
from quatrix.train.recipe import load_recipe
from quatrix.train.report import stage_rows


def micro_recipe():
    recipe = load_recipe("tiny")
    recipe["name"] = "berry-micro"
    recipe["tokenizer"]["vocab_size"] = 400
    recipe["pretrain"].update(steps=6, batch_size=4, seq_len=64, warmup=2, eval_every=3, save_every=2,
                              audio_data="spoken-digits:n=16", eval_batches=2)
    recipe["sft"].update(steps=4, batch_size=4, seq_len=128, warmup=1, eval_every=2, save_every=2, eval_n=4)
    recipe["grpo"].update(steps=3, prompts_per_step=2, group_size=2, micro_batch=4, max_new_tokens=4, warmup=1,
                          eval_every=2, eval_n=4, save_every=1)
    recipe["eval"].update(n=4, max_new_tokens=4, perplexity_batches=2)
    recipe["samples"]["max_new_tokens"] = 4
    return recipe


def run_micro(tmp_path, name, *extra):
    path = tmp_path / "micro.json"
    path.write_text(json.dumps(micro_recipe()))
    return main(["run", "berry", "--recipe", str(path), "--out", str(tmp_path / name), *extra])


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    """The micro recipe as `make run > log 2>&1` runs it: a child process, output to a file."""
    root = tmp_path_factory.mktemp("berry")
    (root / "micro.json").write_text(json.dumps(micro_recipe()))
    with open(root / "log.txt", "w") as log:
        result = subprocess.run([sys.executable, "-m", "quatrix.cli", "run", "berry", "--recipe", str(root / "micro.json"),
                                 "--out", str(root / "straight")], stdout=log, stderr=subprocess.STDOUT, timeout=900)
    assert result.returncode == 0, (root / "log.txt").read_text()[-3000:]
    return root


def test_a_log_file_reads_well(micro_run):
    """No carriage-return redraws, a line per ~5% of each stage, and each stage's end line
    with the training loss as the report shows it."""
    log = (micro_run / "log.txt").read_text()
    assert "\r" not in log
    assert len(log.splitlines()) < 150, log
    assert re.search(r"pretrain: 6 steps, training loss audio [0-9.]+, image [0-9.]+, text [0-9.]+ \(last 5% of "
                     r"steps, per source\), validation loss [0-9.]+", log), log
    assert "pretrain: 6/6 steps loss" in log and "synthesizing spoken-digits: 16/16 clips" in log


def test_every_stage_runs_and_the_report_has_every_section(micro_run, capsys):
    out = micro_run / "straight"
    report = (out / "report.md").read_text()
    for section in ("## Environment", "## Stages", "## Evaluation", "## Samples", "## Plots", "## Parameters",
                    "## Recipe"):
        assert section in report
    for line in ("held-out text perplexity", "math accuracy", "visual QA accuracy", "transcription exact match",
                 "**text**", "**chat**", "**math**", "**image**", "**audio**", "pretrain/loss.png", "grpo/reward.png"):
        assert line in report, line
    assert (out / "samples" / "scene.png").is_file() and (out / "samples" / "clip.wav").is_file()
    assert set(json.loads((out / "stages.json").read_text())) == {"tokenizer", "pretrain", "sft", "grpo", "eval",
                                                                  "samples"}


def test_report_numbers_are_the_metrics_files_numbers(micro_run):
    out = micro_run / "straight"
    report = (out / "report.md").read_text()
    for stage in ("pretrain", "sft", "grpo"):
        metrics = [json.loads(line) for line in (out / stage / "metrics.jsonl").read_text().splitlines()]
        tokens = sum(r["tokens"] for r in metrics)
        row = next(line for line in report.splitlines() if line.startswith(f"| {stage} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert int(cells[2]) == metrics[-1]["step"] and int(cells[3].replace(",", "")) == tokens
        if stage == "pretrain":  # a mixture: its text steps
            metrics = [r for r in metrics if r["source"] == "text"]
        if stage == "sft":  # its conversations, not its plain text
            metrics = [r for r in metrics if not r["source"].startswith("text:")]
        values = [r["reward" if stage == "grpo" else "loss"] for r in metrics]
        k = max(1, len(values) // 20)
        assert cells[5] == f"{sum(values[:k]) / k:.3f} → {sum(values[-k:]) / k:.3f}"
    results = json.loads((out / "eval" / "results.json").read_text())
    row = next(line for line in report.splitlines() if line.startswith("| math accuracy"))
    assert [float(c) for c in row.strip("|").split("|")[1:4]] == [
        round(results["math"][s]["accuracy"], 3) for s in ("pretrain", "sft", "grpo")]


def test_a_finished_run_is_not_redone(micro_run, capsys):
    capsys.readouterr()
    assert run_micro(micro_run, "straight") == 0
    assert capsys.readouterr().out.count("skipped") == 6


def test_an_interrupted_stage_resumes_to_the_same_numbers(micro_run, tmp_path):
    import shutil

    killed = tmp_path / "killed"  # the straight run as it stood when SFT finished
    shutil.copytree(micro_run / "straight", killed, ignore=shutil.ignore_patterns("grpo", "eval", "samples",
                                                                                  "report.md"))
    done = json.loads((killed / "stages.json").read_text())
    (killed / "stages.json").write_text(json.dumps({k: done[k] for k in ("tokenizer", "pretrain", "sft")}))
    assert run_micro(tmp_path, "killed", "--interrupt", "grpo:2") == 130  # dies inside GRPO at step 2
    assert set(json.loads((killed / "stages.json").read_text())) == {"tokenizer", "pretrain", "sft"}
    assert len((killed / "grpo" / "metrics.jsonl").read_text().splitlines()) == 2  # checkpoint: step 1
    assert run_micro(tmp_path, "killed") == 0

    def numbers(out):
        rows = [{k: v for k, v in r.items() if k not in ("seconds", "tokens_per_s")} for r in stage_rows(out)]
        results = json.loads((out / "eval" / "results.json").read_text())
        perplexity = {stage: {k: v for k, v in r.items() if k != "ckpt"} for stage, r in results["perplexity"].items()}
        return rows, results["math"], perplexity

    assert numbers(killed) == numbers(micro_run / "straight")


def test_bad_recipe_files_and_directories_are_refused(tmp_path, capsys):
    (tmp_path / "broken.json").write_text("{not json")
    assert main(["run", "berry", "--recipe", str(tmp_path / "broken.json")]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main(["run", "berry", "--recipe", str(tmp_path / "missing.json")]) == 2
    assert "recipe file not found" in capsys.readouterr().err
    out = tmp_path / "run"
    out.mkdir()
    (out / "recipe.json").write_text(json.dumps({**load_recipe("tiny"), "name": "other"}))
    assert main(["run", "berry", "--preset", "tiny", "--out", str(out)]) == 2
    assert re.search(r"another recipe \(it differs in name\)", capsys.readouterr().err)


def test_a_gpu_recipe_refuses_a_cpu(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["run", "berry", "--preset", "berry-q0", "--out", str(tmp_path / "q0")]) == 2
    assert "sized for GPUs" in capsys.readouterr().err and not (tmp_path / "q0").exists()


@pytest.mark.slow
def test_the_recipe_runs_its_training_stages_under_torchrun(tmp_path, monkeypatch):
    """--nproc 2: every training stage in two processes (gloo on CPU), then the report."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert run_micro(tmp_path, "ddp", "--nproc", "2") == 0
    for stage in ("pretrain", "sft", "grpo"):
        assert json.loads((tmp_path / "ddp" / stage / "run_config.json").read_text())["world_size"] == 2
    assert "## Evaluation" in (tmp_path / "ddp" / "report.md").read_text()


def test_time_left_scales_the_recipes_estimate_by_the_finished_stages():
    from quatrix.train.berry import remaining

    recipe = {"expected_seconds": {"tokenizer": 5, "pretrain": 100, "sft": 50, "grpo": 30, "eval": 10, "samples": 0}}
    assert remaining(recipe, {}, "tokenizer") == "about 3:15 (the recipe's estimate)"
    assert remaining(recipe, {"tokenizer": {"seconds": 50}}, "pretrain") == "about 3:10 (the recipe's estimate)"
    done = {"tokenizer": {"seconds": 5}, "pretrain": {"seconds": 205}}  # twice as slow as expected
    assert remaining(recipe, done, "sft") == "about 3:00"
    assert remaining({}, {}, "sft") == "unknown time"


def test_compare_runs_sees_a_changed_number(micro_run, tmp_path):
    import shutil

    sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
    import compare_runs

    copy = tmp_path / "copy"
    shutil.copytree(micro_run / "straight", copy)
    assert compare_runs.compare(micro_run / "straight", copy) == []
    lines = (copy / "sft" / "metrics.jsonl").read_text().splitlines()
    record = json.loads(lines[1])
    record["loss"] = float(record["loss"]) + 1e-7
    (copy / "sft" / "metrics.jsonl").write_text("\n".join([lines[0], json.dumps(record), *lines[2:]]) + "\n")
    differences = compare_runs.compare(micro_run / "straight", copy)
    assert len(differences) == 1 and differences[0].startswith("sft: step 2 differs")


def test_berry_q0_pretrains_on_a_corpus_the_user_names(tmp_path, capsys):
    assert main(["run", "berry", "--preset", "berry-q0", "--force", "--out", str(tmp_path / "q0")]) == 2
    assert "quatrix data prepare" in capsys.readouterr().err and not (tmp_path / "q0").exists()
    assert main(["run", "berry", "--preset", "berry-q0", "--data", "corpus/", "--print-recipe"]) == 0
    recipe = json.loads(capsys.readouterr().out)
    assert recipe["pretrain"]["data"] == ["corpus/"] and recipe["pretrain"]["max_epochs"] == 4
