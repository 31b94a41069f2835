import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from quatrix import QuatrixLM
from quatrix.cli import main
from quatrix.tokenizer import train_tokenizer

WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly hum".split()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    rng = np.random.default_rng(0)
    text = "\n".join(" ".join(rng.choice(WORDS, 8)) for _ in range(3000)) + "\n"
    (root / "corpus.txt").write_text(text)
    train_tokenizer([text], 300, root / "tok")
    return root


def run(setup, out, *extra):
    args = ["pretrain", "--preset", "tiny", "--data", str(setup / "corpus.txt"), "--tokenizer", str(setup / "tok"),
            "--batch-size", "4", "--seq-len", "32", "--steps", "6", "--warmup", "2", "--eval-every", "3",
            "--eval-batches", "2", "--save-every", "2", "--sample-tokens", "0", "--lr", "1e-2",
            "--precision", "fp32", "--cache-dir", str(setup / "cache"), "--out", str(setup / out), *extra]
    return main(args)


def losses(setup, out):
    return [r["loss"] for r in map(json.loads, (setup / out / "metrics.jsonl").read_text().splitlines())]


def test_few_steps_write_every_output(setup):
    assert run(setup, "basic") == 0
    out = setup / "basic"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert {"step", "loss", "lr", "tokens", "tokens_per_s", "grad_norm"} <= set(records[0])
    assert records[0]["tokens"] == 4 * 32  # --batch-size x --seq-len
    assert json.loads((out / "summary.json").read_text())["tokens"] == 6 * 4 * 32
    assert "val_loss" in records[2] and "val_loss" in records[5] and "val_loss" not in records[0]
    assert records[-1]["loss"] < records[0]["loss"]
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    config = json.loads((out / "run_config.json").read_text())
    assert config["model"]["vocab_size"] == 300 and config["args"]["steps"] == 6
    ckpt = out / "checkpoint"
    assert {p.name for p in ckpt.iterdir()} == {"model.safetensors", "config.json", "tokenizer.json",
                                                 "tokenizer_meta.json", "trainer_state.pt", "manifest.json"}
    assert QuatrixLM.from_pretrained(ckpt).config.vocab_size == 300


def test_resume_repeats_the_uninterrupted_losses_exactly(setup):
    assert run(setup, "straight") == 0
    assert run(setup, "killed", "--stop-after", "5") == 0  # dies after step 5; last checkpoint: step 4
    assert len(losses(setup, "killed")) == 5
    assert run(setup, "killed", "--resume") == 0
    assert losses(setup, "killed") == losses(setup, "straight")  # identical, step for step


def test_muon_trains(setup):
    assert run(setup, "muon", "--optimizer", "muon") == 0
    values = losses(setup, "muon")
    assert values[-1] < values[0]


def test_gradient_accumulation_matches_a_bigger_batch(setup):
    assert run(setup, "big", "--batch-size", "4") == 0
    assert run(setup, "accum", "--batch-size", "2", "--grad-accum", "2") == 0
    np.testing.assert_allclose(losses(setup, "accum"), losses(setup, "big"), rtol=1e-5)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(setup, monkeypatch, capsys):
    calls = {"n": 0}
    forward = QuatrixLM.forward

    def poisoned(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 3 and out["loss"] is not None:
                out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(QuatrixLM, "forward", poisoned)
    assert run(setup, "nan") == 1
    err = capsys.readouterr().err
    assert "loss became nan at step 3" in err and "step 2" in err
    state = torch.load(setup / "nan" / "checkpoint" / "trainer_state.pt", weights_only=False)
    assert state["step"] == 2


def test_bad_arguments(setup, capsys):
    assert run(setup, "bad", "--resume") == 2
    assert "no run to continue" in capsys.readouterr().err
    assert run(setup, "bad", "--seq-len", "5000") == 2
    assert "exceeds the preset's max_seq_len" in capsys.readouterr().err
    assert main(["pretrain", "--data", str(setup / "missing.txt"), "--out", str(setup / "bad")]) == 2
    assert "data not found" in capsys.readouterr().err


def test_config_file_supplies_defaults(setup):
    (setup / "opts.json").write_text(json.dumps({"steps": 2, "optimizer": "muon"}))
    assert run(setup, "cfg", "--config", str(setup / "opts.json"), "--steps", "3") == 0
    saved = json.loads((setup / "cfg" / "run_config.json").read_text())["args"]
    assert saved["steps"] == 3 and saved["optimizer"] == "muon"  # the flag wins, the file fills in


def test_eval_reports_perplexity_and_bits_per_byte(setup, capsys):
    assert run(setup, "for_eval") == 0
    capsys.readouterr()
    assert main(["eval", "--ckpt", str(setup / "for_eval" / "checkpoint"), "--data", str(setup / "corpus.txt"),
                 "--seq-len", "32", "--cache-dir", str(setup / "cache"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    final_val = [json.loads(line) for line in (setup / "for_eval" / "metrics.jsonl").read_text().splitlines()][-1]
    assert result["perplexity"] == pytest.approx(np.exp(result["loss"]))
    assert result["loss"] == pytest.approx(final_val["val_loss"], rel=0.05)
    assert 0 < result["bits_per_byte"] < 8


def torchrun(setup, out, *extra, port):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           "-m", "quatrix.cli", "pretrain", "--preset", "tiny", "--data", str(setup / "corpus.txt"),
           "--tokenizer", str(setup / "tok"), "--seq-len", "32", "--steps", "6", "--warmup", "2",
           "--eval-every", "3", "--eval-batches", "2", "--save-every", "2", "--sample-tokens", "0", "--lr", "1e-2",
           "--precision", "fp32", "--cache-dir", str(setup / "cache"), "--out", str(setup / out), "--device", "cpu", *extra]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((setup / out / "run_config.json").read_text())["world_size"] == 2


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_the_global_batch(setup):
    assert run(setup, "single", "--batch-size", "4") == 0
    torchrun(setup, "ddp", "--batch-size", "2", port=29517)
    np.testing.assert_allclose(losses(setup, "ddp"), losses(setup, "single"), rtol=1e-4)


@pytest.mark.slow
def test_ddp_with_gradient_accumulation(setup):
    """Each micro-batch enters its own no_sync context (one context object entered twice crashed)."""
    assert run(setup, "single_accum", "--batch-size", "4") == 0
    torchrun(setup, "ddp_accum", "--batch-size", "1", "--grad-accum", "2", port=29518)
    np.testing.assert_allclose(losses(setup, "ddp_accum"), losses(setup, "single_accum"), rtol=1e-4)


@pytest.mark.slow
def test_ddp_trains_a_vision_preset_on_text_alone(setup):
    """berry-q0 carries a vision encoder that text batches never reach: it is frozen, so DDP
    does not wait for its gradients (which used to fail at the first step)."""
    torchrun(setup, "ddp_vision", "--preset", "berry-q0", "--hidden-size", "64", "--num-layers", "1",
             "--batch-size", "2", port=29519)
    model = QuatrixLM.from_pretrained(setup / "ddp_vision" / "checkpoint")
    assert model.vision is not None and len(losses(setup, "ddp_vision")) == 6


def test_text_and_image_mixture_trains_vision_and_resumes_exactly(setup):
    extra = ("--image-data", "clevr", "--mixture", "text=0.5,image=0.5")
    assert run(setup, "mix", *extra) == 0
    records = [json.loads(line) for line in (setup / "mix" / "metrics.jsonl").read_text().splitlines()]
    assert {r["source"] for r in records} == {"text", "image"}
    model = QuatrixLM.from_pretrained(setup / "mix" / "checkpoint")
    assert model.config.use_vision and model.vision is not None
    assert run(setup, "mix_killed", *extra, "--stop-after", "5") == 0
    assert run(setup, "mix_killed", *extra, "--resume") == 0
    assert losses(setup, "mix_killed") == losses(setup, "mix")


@pytest.mark.parametrize("source, flag", [("image", "--image-data"), ("audio", "--audio-data"),
                                          ("world", "--world-data")])
def test_mixture_needs_each_sources_data(setup, capsys, source, flag):
    assert run(setup, f"bad_mix_{source}", "--mixture", f"text=0.5,{source}=0.5") == 2
    assert f"give {flag}" in capsys.readouterr().err


@pytest.fixture(scope="module")
def world_data(setup):
    from quatrix.data.world import collect

    collect("MiniGrid-Empty-5x5-v0", 6, setup / "world", seed=0, image_size=16, max_steps=10)
    return setup / "world"


JOINT = ("--image-data", "clevr", "--audio-data", "spoken-digits:n=12", "--mixture",
         "text=0.35,image=0.25,audio=0.2,world=0.2", "--steps", "10", "--seed", "4")  # seed 4 draws all four


def test_joint_mixture_trains_every_plugin_and_logs_each_sources_loss(setup, world_data):
    assert run(setup, "joint", *JOINT, "--world-data", str(world_data)) == 0
    records = [json.loads(line) for line in (setup / "joint" / "metrics.jsonl").read_text().splitlines()]
    assert {r["source"] for r in records} == {"text", "image", "audio", "world"}
    for r in records:  # each step's loss also under its source's name, and only that one
        assert r[f"{r['source']}_loss"] == r["loss"]
        assert not {f"{s}_loss" for s in ("text", "image", "audio", "world") if s != r["source"]} & set(r)
    model = QuatrixLM.from_pretrained(setup / "joint" / "checkpoint")
    assert model.vision is not None and model.audio is not None and model.world is not None
    assert model.config.world_image_size == 16
    fresh = QuatrixLM(model.config)
    for name in ("vision", "audio", "world"):  # every plugin learned something
        trained, initial = getattr(model, name).state_dict(), getattr(fresh, name).state_dict()
        assert any(not torch.equal(trained[k], initial[k]) for k in trained), name
    assert (setup / "joint" / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_joint_mixture_resumes_exactly(setup, world_data):
    extra = (*JOINT, "--world-data", str(world_data))
    assert run(setup, "joint_straight", *extra) == 0
    assert run(setup, "joint_killed", *extra, "--stop-after", "7") == 0
    assert run(setup, "joint_killed", *extra, "--resume") == 0
    assert losses(setup, "joint_killed") == losses(setup, "joint_straight")


@pytest.mark.slow
def test_ddp_joint_mixture(setup, world_data):
    """Steps of one source leave the other plugins without gradients: DDP must expect that."""
    torchrun(setup, "ddp_joint", *JOINT, "--world-data", str(world_data), "--batch-size", "2", port=29520)
    records = [json.loads(line) for line in (setup / "ddp_joint" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 10 and {r["source"] for r in records} == {"text", "image", "audio", "world"}


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_resume_keeps_the_thread_count_the_run_started_with(setup, restore_threads):
    """Sums split over threads round differently (1 vs 2 threads part at step 2 here), so
    a run resumed on a different thread count must go on with the count it began with."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 CPU cores")
    torch.set_num_threads(1)
    assert run(setup, "one_thread", "--eval-every", "0") == 0
    assert run(setup, "threads_killed", "--eval-every", "0", "--stop-after", "3") == 0
    torch.set_num_threads(2)
    assert run(setup, "two_threads", "--eval-every", "0") == 0
    assert losses(setup, "two_threads") != losses(setup, "one_thread")  # else this test proves nothing
    torch.set_num_threads(2)
    assert run(setup, "threads_killed", "--eval-every", "0", "--resume") == 0
    assert losses(setup, "threads_killed") == losses(setup, "one_thread")
    assert json.loads((setup / "threads_killed" / "run_config.json").read_text())["threads"] == 1


@pytest.fixture(scope="module")
def reference(setup):
    """Losses of an uninterrupted run with run()'s defaults (evaluation and saving do not change them)."""
    assert run(setup, "reference") == 0
    return losses(setup, "reference")


def test_resume_before_the_first_checkpoint_starts_over(setup, reference, capsys):
    assert run(setup, "early", "--save-every", "0", "--stop-after", "2") == 0
    assert not (setup / "early" / "checkpoint").exists()
    assert run(setup, "early", "--save-every", "0", "--resume") == 0
    assert "holds no checkpoint yet; starting from step 0" in capsys.readouterr().err
    assert losses(setup, "early") == reference


def test_resume_after_a_kill_between_the_checkpoint_renames(setup, reference):
    assert run(setup, "swap", "--stop-after", "5") == 0  # checkpoint at step 4
    out = setup / "swap"
    (out / "checkpoint").rename(out / ".checkpoint.tmp")  # as if killed between the two renames
    assert run(setup, "swap", "--resume") == 0
    assert losses(setup, "swap") == reference
    assert not (out / ".checkpoint.tmp").exists()


@pytest.mark.parametrize("flag, value, message", [
    ("--eval-every", "-1", "must be >= 0"), ("--steps", "0", "must be >= 1"), ("--batch-size", "-3", "must be >= 1"),
    ("--lr", "nan", "finite number"), ("--lr", "0", "finite number"), ("--seq-len", "1", "must be >= 2"),
    ("--grad-accum", "0", "must be >= 1"), ("--seed", "-1", "must be >= 0"), ("--warmup", "x", "expected an integer"),
])
def test_numeric_flags_refuse_bad_values(setup, capsys, flag, value, message):
    with pytest.raises(SystemExit):
        run(setup, "flags", flag, value)
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and message in err


def test_warmup_longer_than_the_run_is_refused(setup, capsys):
    assert run(setup, "flags", "--warmup", "7") == 2
    assert "--warmup 7 is longer than the run" in capsys.readouterr().err


def test_bf16_precision_trains_like_fp32(setup):
    assert run(setup, "fp32", "--precision", "fp32") == 0
    assert run(setup, "bf16", "--precision", "bf16") == 0
    assert json.loads((setup / "bf16" / "run_config.json").read_text())["precision"] == "bf16"
    np.testing.assert_allclose(losses(setup, "bf16"), losses(setup, "fp32"), rtol=0.03)
    assert losses(setup, "bf16") != losses(setup, "fp32")  # bf16 really ran


def test_resume_keeps_the_precision_the_run_began_with(setup, reference):
    assert run(setup, "prec", "--precision", "fp32", "--stop-after", "5") == 0
    assert run(setup, "prec", "--precision", "auto", "--resume") == 0  # auto would pick bf16 on some CPUs
    assert losses(setup, "prec") == reference  # the reference ran in fp32 too
