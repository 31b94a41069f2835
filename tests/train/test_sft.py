import json

import pytest
import torch

from quatrix import QuatrixLM
from quatrix.cli import main
from tests.conftest import TASK


def sft(init, out, *extra, steps=6):
    return main(["sft", "--init", str(init), "--data", f"task:{TASK}", "--steps", str(steps), "--batch-size", "8",
                 "--seq-len", "96", "--lr", "3e-3", "--warmup", "1", "--eval-every", "3", "--save-every", "2",
                 "--eval-n", "16", "--sample-tokens", "8", "--precision", "fp32", "--out", str(out), *extra])


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_sft_lowers_the_loss_on_the_assistant_tokens(chat_checkpoint, tmp_path, capsys):
    assert sft(chat_checkpoint, tmp_path / "run", "--lr", "1e-2", steps=20) == 0
    rows = records(tmp_path / "run")
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    assert val[-1] < 0.7 * val[0], val
    assert rows[-1]["skipped"] == 0 and "sample:" in capsys.readouterr().out
    for name in ("run_config.json", "loss.png", "summary.json", "checkpoint/model.safetensors",
                 "checkpoint/tokenizer_meta.json", "checkpoint/manifest.json"):
        assert (tmp_path / "run" / name).is_file(), name


def test_sft_resumes_exactly(chat_checkpoint, tmp_path):
    assert sft(chat_checkpoint, tmp_path / "full") == 0
    assert sft(chat_checkpoint, tmp_path / "cut", "--stop-after", "3") == 0  # killed after step 3 (saved at 2)
    assert sft(chat_checkpoint, tmp_path / "cut", "--resume") == 0
    assert [r["loss"] for r in records(tmp_path / "full")] == [r["loss"] for r in records(tmp_path / "cut")]
    a = QuatrixLM.from_pretrained(tmp_path / "full" / "checkpoint").state_dict()
    b = QuatrixLM.from_pretrained(tmp_path / "cut" / "checkpoint").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sft_mixes_sources_with_weights(chat_checkpoint, tmp_path):
    convs = tmp_path / "chat.jsonl"
    convs.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"hello {i}"},
                                                      {"role": "assistant", "content": "I am fine."}]}) + "\n"
                             for i in range(40)))
    assert sft(chat_checkpoint, tmp_path / "mix", "--data", str(convs), "--weights", "0.5,0.5", steps=8) == 0
    assert {r["source"] for r in records(tmp_path / "mix")} == {f"task:{TASK}", str(convs)}


def test_a_plain_text_source_trains_on_every_token_and_is_validated_on_its_own(chat_checkpoint, tmp_path, capsys):
    corpus = tmp_path / "plain.txt"
    corpus.write_text("".join(f"Line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(400)))
    assert sft(chat_checkpoint, tmp_path / "text", "--data", f"text:{corpus}", "--weights", "0.5,0.5", steps=8) == 0
    rows = records(tmp_path / "text")
    assert {r["source"] for r in rows} == {f"task:{TASK}", f"text:{corpus}"}
    evals = [r for r in rows if "val_loss" in r]
    assert evals and all("val_text_loss" in r for r in evals)
    assert evals[-1]["val_text_loss"] < evals[0]["val_text_loss"]  # the repeated line is learnt
    summary = json.loads((tmp_path / "text" / "summary.json").read_text())
    assert summary["val_text_loss"] == evals[-1]["val_text_loss"]
    assert "held-out plain-text loss" in capsys.readouterr().out
    assert (tmp_path / ".token_cache").is_dir()  # beside the run, where pretraining keeps its cache


@pytest.mark.parametrize("extra, message", [
    (["--weights", "1,2,3"], "3 weight"),
    (["--weights", "1,x"], "comma-separated numbers"),
    (["--data", f"task:{TASK}"], "given twice"),
    (["--seq-len", "4096"], "exceeds the model's max_seq_len"),
    (["--data", "task:no_such_task"], "unknown task"),
    (["--data", "text:no/such/corpus.txt"], "data not found: no/such/corpus.txt"),
])
def test_bad_sft_arguments_fail_clearly(chat_checkpoint, tmp_path, capsys, extra, message):
    assert sft(chat_checkpoint, tmp_path / "bad", *extra) == 2
    assert message in capsys.readouterr().err


def test_an_init_without_a_tokenizer_or_of_another_vocabulary_is_refused(chat_checkpoint, tmp_path, capsys):
    bare = tmp_path / "bare"
    QuatrixLM.from_pretrained(chat_checkpoint).save_pretrained(bare)
    assert sft(bare, tmp_path / "x") == 2
    assert "no tokenizer" in capsys.readouterr().err
    from quatrix.tokenizer import load_tokenizer

    load_tokenizer("gpt2").save(bare)  # 50,268 tokens beside a 320-token model
    assert sft(bare, tmp_path / "y") == 2
    assert "does not match its tokenizer" in capsys.readouterr().err
