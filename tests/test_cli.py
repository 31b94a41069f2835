import json
import subprocess
import sys

import pytest
import torch

from conftest import tiny_config
from quatrix import QuatrixLM, generate
from quatrix.cli import main


def test_info_preset_prints_table_and_forward(capsys):
    assert main(["info", "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "mixers" in out and "total" in out and "logits (1, 10, 50257)" in out


def test_info_json_and_mixer_override(capsys):
    assert main(["info", "--preset", "berry-q0", "--mixer", "mha", "--q-heads", "8", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["config"]["mixer"] == "mha" and data["parameters"]["mixer_weights_per_layer"] == 1_048_576


def test_info_checkpoint_and_errors(tmp_path, capsys):
    QuatrixLM(tiny_config(use_vision=True)).save_pretrained(tmp_path / "c")
    assert main(["info", "--ckpt", str(tmp_path / "c")]) == 0
    assert "text + image" in capsys.readouterr().out
    assert main(["info", "--ckpt", str(tmp_path / "missing")]) == 2
    assert "checkpoint directory not found" in capsys.readouterr().err


def test_console_script_entry_point():
    result = subprocess.run([sys.executable, "-m", "quatrix.cli", "info", "--preset", "nope"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice: 'nope'" in result.stderr


def test_generate_streams_token_ids(capsys):
    assert main(["generate", "--preset", "tiny", "--prompt", "15496 995", "--max-new-tokens", "5",
                 "--temperature", "0"]) == 0
    tokens = capsys.readouterr().out.split()
    assert len(tokens) == 5 and all(0 <= int(t) < 50257 for t in tokens)


def test_generate_from_checkpoint_with_image_and_samples(tmp_path, capsys):
    from PIL import Image

    QuatrixLM(tiny_config(use_vision=True)).save_pretrained(tmp_path / "c")
    Image.new("RGB", (50, 40), (200, 30, 30)).save(tmp_path / "red.png")
    (tmp_path / "prompt.txt").write_text("5, 17, 3\n")
    assert main(["generate", "--ckpt", str(tmp_path / "c"), "--prompt-file", str(tmp_path / "prompt.txt"),
                 "--image", str(tmp_path / "red.png"), "--num-samples", "2", "--max-new-tokens", "3",
                 "--seed", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line[:3] for line in lines] == ["[0]", "[1]"] and all(len(line.split()) == 4 for line in lines)


def test_generate_errors(tmp_path, capsys):
    assert main(["generate", "--preset", "tiny", "--prompt", "1 two"]) == 2
    assert "must be token ids" in capsys.readouterr().err
    assert main(["generate", "--preset", "tiny", "--prompt", "1", "--image", str(tmp_path / "none.png")]) == 2
    assert "no vision encoder" in capsys.readouterr().err
    QuatrixLM(tiny_config(use_vision=True)).save_pretrained(tmp_path / "c")
    assert main(["generate", "--ckpt", str(tmp_path / "c"), "--prompt", "1", "--image", str(tmp_path / "none.png")]) == 2
    assert "image not found" in capsys.readouterr().err
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert main(["generate", "--ckpt", str(tmp_path / "c"), "--prompt", "1", "--image", str(tmp_path / "bad.png")]) == 2
    assert "could not read image" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", "--preset", "tiny", "--prompt", "1", "--top-p", "2"])
    assert "argument --top-p: must be a finite number in (0, 1]" in capsys.readouterr().err


BAD_FLAGS = [  # (command, flag, value): zero, negative, NaN and out-of-range values of every numeric flag
    (["info"], "--seq-len", "0"), (["info"], "--q-heads", "-2"),
    (["generate", "--preset", "tiny", "--prompt", "1"], "--max-new-tokens", "0"),
    (["generate", "--preset", "tiny", "--prompt", "1"], "--temperature", "-1"),
    (["generate", "--preset", "tiny", "--prompt", "1"], "--temperature", "nan"),
    (["generate", "--preset", "tiny", "--prompt", "1"], "--top-k", "-1"),
    (["generate", "--preset", "tiny", "--prompt", "1"], "--top-p", "0"),
    (["generate", "--preset", "tiny", "--prompt", "1"], "--num-samples", "0"),
    (["generate", "--preset", "tiny", "--prompt", "1"], "--stop-id", "-5"),
    (["generate", "--preset", "tiny", "--prompt", "1"], "--seed", "-1"),
    (["eval", "--ckpt", "x", "--data", "y"], "--seq-len", "1"), (["eval", "--ckpt", "x", "--data", "y"], "--batch-size", "0"),
    (["eval", "--ckpt", "x", "--data", "y"], "--max-batches", "0"),
    (["tokenizer", "train", "--data", "x", "--out", "y"], "--vocab-size", "-1"),
    (["pretrain"], "--eval-every", "-1"), (["pretrain"], "--save-every", "-2"), (["pretrain"], "--lr", "inf"),
    (["pretrain"], "--weight-decay", "-0.1"), (["pretrain"], "--sample-tokens", "-1"),
    (["ablate"], "--heads", "0"), (["ablate"], "--steps", "0"), (["ablate"], "--warmup", "-1"),
    (["ablate"], "--lr", "-1"), (["ablate"], "--eval-batches", "0"),
]


@pytest.mark.parametrize("command, flag, value", BAD_FLAGS)
def test_numeric_flags_of_every_command_refuse_bad_values(capsys, command, flag, value):
    with pytest.raises(SystemExit) as exit:
        main([*command, flag, value])
    assert exit.value.code == 2
    assert f"argument {flag}:" in capsys.readouterr().err


def test_generate_with_a_tokenizer_takes_and_prints_text(tmp_path, capsys):
    from quatrix.tokenizer import train_tokenizer

    tok = train_tokenizer(["once upon a time there was a café " * 40], 300)
    QuatrixLM(tiny_config(vocab_size=tok.vocab_size)).save_pretrained(tmp_path / "c")
    tok.save(tmp_path / "c")
    assert main(["generate", "--ckpt", str(tmp_path / "c"), "--prompt", "once upon", "--max-new-tokens", "12",
                 "--temperature", "0"]) == 0
    text = capsys.readouterr().out
    model = QuatrixLM.from_pretrained(tmp_path / "c")
    expected = generate(model, [tok.encode("once upon")], 12, temperature=0, stop_token_ids=[tok.eot_id]).tokens[0]
    assert text == tok.decode(expected) + "\n"


def test_tokenizer_train_command(tmp_path, capsys):
    from quatrix.tokenizer import load_tokenizer

    (tmp_path / "corpus.txt").write_text("the rain in spain stays mainly in the plain\n" * 200)
    assert main(["tokenizer", "train", "--data", str(tmp_path / "corpus.txt"), "--vocab-size", "300",
                 "--out", str(tmp_path / "tok")]) == 0
    assert "trained a" in capsys.readouterr().out
    tok = load_tokenizer(tmp_path / "tok")
    assert tok.decode(tok.encode("the rain in spain")) == "the rain in spain"
    assert len(tok.encode("the rain in spain")) < len("the rain in spain") // 2  # it learned merges
    assert main(["tokenizer", "train", "--data", str(tmp_path / "none.txt"), "--out", str(tmp_path / "t2")]) == 2
    assert "data not found" in capsys.readouterr().err


def test_ctrl_c_stops_a_command_cleanly(monkeypatch, capsys):
    import quatrix.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    from quatrix.commands import tasks

    monkeypatch.setattr(tasks, "main", interrupted)
    assert cli.main(["tasks"]) == 130
    assert "quatrix tasks: interrupted" in capsys.readouterr().err


def test_generate_with_bf16_weights_and_a_compiled_step_matches_eager(capsys, monkeypatch):
    """--dtype bf16 casts the weights; --compile decodes the same tokens as eager (the
    compiler replaced by the eager step here: the compiled graph has its own test)."""
    from quatrix import static_decode

    seen = []  # (dtype of the weights, cache type) of every static step taken

    def step(model, tokens, cache):
        seen.append((model.head.weight.dtype, type(cache).__name__))
        return static_decode._decode_logits(model, tokens, cache)

    monkeypatch.setattr(static_decode, "_compiled_step", lambda model: lambda tokens, cache: step(model, tokens, cache))
    args = ["generate", "--preset", "tiny", "--prompt", "15496 995", "--max-new-tokens", "6", "--temperature", "0"]
    assert main([*args, "--dtype", "bf16"]) == 0
    bf16 = capsys.readouterr().out
    assert seen == []  # no --compile: the eager step
    assert main([*args, "--dtype", "bf16", "--compile"]) == 0
    assert capsys.readouterr().out == bf16 and len(bf16.split()) == 6
    assert seen == [(torch.bfloat16, "StaticCache")] * 5  # 6 tokens: the prefill's, then 5 static steps
