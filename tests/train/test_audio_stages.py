"""Audio through every stage: the transcribe task, SFT on speech (--audio-data and JSONL
clips), GRPO, eval with error rates and baselines, generate --audio and chat /audio."""

import json

import numpy as np
import pytest
import soundfile

from quatrix import QuatrixLM
from quatrix.cli import main
from quatrix.data.speech import voices
from quatrix.eval.tasks import _error_rates
from quatrix.tasks import load_task, task_from_spec
from quatrix.tasks.base import Item
from quatrix.tokenizer import load_tokenizer
from tests.conftest import piped_chat, sft_grpo_eval, tiny_config


@pytest.fixture(scope="module")
def audio_checkpoint(chat_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("audio_checkpoint")
    tokenizer = load_tokenizer(chat_checkpoint)
    QuatrixLM(tiny_config(vocab_size=tokenizer.vocab_size, max_seq_len=128, use_audio=True,
                          audio_max_seconds=4.0)).save_pretrained(root)
    tokenizer.save(root)
    return root


def clip(path, seconds=0.6, rate=22050, channels=1):
    t = np.arange(int(seconds * rate)) / rate
    soundfile.write(str(path), np.stack([0.2 * np.sin(2 * np.pi * 220 * t)] * channels, axis=1), rate)
    return path


def test_transcribe_holds_out_voices_never_trained_on():
    task = load_task("transcribe", data="spoken-digits", seed=1)
    held = task.eval_items(6)
    assert all(item.entry in voices("eval") for item in held) and len({i.key for i in held}) == 6
    index = 0
    for _ in range(6):
        item, index = task.train_item(index)
        assert item.entry in voices("train") and item.audio.numel() > 0
    assert [a for _, a in task.train_answers(4)] == [task.train_item(i)[0].answer for i in range(4)]
    item = held[0]
    messages = task.prompt(item)
    assert messages == [{"role": "user", "content": "Transcribe the audio.", "audio": item.audio}]
    assert task.target(item) == item.answer
    assert task.score_text(item.answer.upper() + ".", item) == 1.0 and task.score_text("x", item) == 0.0
    assert task.format_score("4 2") == 1.0 and task.format_score("<answer>4</answer>") == 0.0
    assert task.format_score("  ") == 0.0


def test_transcribe_takes_the_model_sample_rate_and_refuses_models_without_audio():
    config = tiny_config(use_audio=True, audio_max_seconds=4.0)
    task = task_from_spec("transcribe:data=spoken-numbers", config=config)
    assert task.sample_rate == config.sample_rate and task.max_seconds == 4.0
    with pytest.raises(ValueError, match="no audio encoder"):
        task_from_spec("transcribe", config=tiny_config())
    with pytest.raises(ValueError, match="unknown option"):
        load_task("transcribe", data="spoken-digits", colour="red")
    with pytest.raises(ValueError, match="apply to the built-in corpora only"):
        load_task("transcribe", data="/tmp", max_digits=2)


def test_transcribe_on_the_users_own_clips(tmp_path):
    for i in range(40):
        clip(tmp_path / f"c{i}.wav")
        (tmp_path / f"c{i}.txt").write_text(f"clip {i}")
    task = load_task("transcribe", data=str(tmp_path))
    held = task.eval_items(3)
    train, _ = task.train_item(0)
    assert train.key not in {i.key for i in held} and held[0].audio.shape == (int(0.6 * 16000),)


def test_error_rates_on_hand_made_transcripts():
    items = [Item(question="", answer="4 2 7"), Item(question="", answer="1 0")]
    rates = _error_rates("", items, ["4 7", "1 0 0"])  # one deletion, one insertion: 2 edits over 5 words
    assert rates["wer"] == pytest.approx(2 / 5) and rates["cer"] == pytest.approx(4 / 8)
    assert _error_rates("chance", items, ["4 2 7", "1 0"]) == {"chance_wer": 0.0, "chance_cer": 0.0}


def test_speech_trains_through_sft_grpo_and_evaluates_with_baselines(audio_checkpoint, tmp_path, capsys):
    result = sft_grpo_eval(audio_checkpoint, tmp_path, capsys, sft_args=["--audio-data", "spoken-digits:max_digits=2"],
                           task="transcribe", seq_len=64, n=6)
    record = json.loads((tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["source"] == "task:transcribe:data=spoken-digits,max_digits=2" and "val_loss" in record
    base = result["baselines"]
    assert 0 <= result["wer"] and 0 <= result["cer"] and set(result["accuracy_by_kind"]) <= {
        "1 digit", "2 digits", "3 digits"}
    for name in ("majority", "chance", "text_only"):
        assert f"{name}_accuracy" in base and f"{name}_wer" in base and f"{name}_cer" in base
    assert main(["eval", "--ckpt", str(audio_checkpoint), "--task", "transcribe", "--n", "3",
                 "--max-new-tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert "audio zeroed" in out and "error rates (word / character)" in out and "random transcript" in out


def test_sft_reads_clips_named_in_conversations(audio_checkpoint, tmp_path):
    clip(tmp_path / "hum.wav", rate=8000, channels=2)
    lines = [json.dumps({"messages": [{"role": "user", "content": f"what is this {i}?", "audio": "hum.wav"},
                                      {"role": "assistant", "content": "a hum"}]}) for i in range(10)]
    (tmp_path / "speech.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["sft", "--init", str(audio_checkpoint), "--data", str(tmp_path / "speech.jsonl"), "--steps", "1",
                 "--batch-size", "2", "--seq-len", "64", "--warmup", "0", "--eval-every", "0", "--save-every", "0",
                 "--sample-tokens", "0", "--out", str(tmp_path / "sft")]) == 0


def test_sft_refuses_speech_for_a_model_without_audio(chat_checkpoint, tmp_path, capsys):
    assert main(["sft", "--init", str(chat_checkpoint), "--audio-data", "spoken-digits", "--steps", "1", "--warmup", "0", "--seq-len", "64",
                 "--out", str(tmp_path / "sft")]) == 2
    assert "no audio encoder" in capsys.readouterr().err


def test_generate_transcribes_an_audio_file(audio_checkpoint, chat_checkpoint, tmp_path, capsys):
    path = clip(tmp_path / "a.flac", rate=44100, channels=2)  # any rate, stereo: resampled, averaged
    assert main(["generate", "--ckpt", str(audio_checkpoint), "--audio", str(path), "--max-new-tokens", "3",
                 "--temperature", "0"]) == 0
    assert main(["generate", "--ckpt", str(audio_checkpoint), "--audio", str(path), "--chat", "--max-new-tokens",
                 "3", "--temperature", "0"]) == 0
    capsys.readouterr()
    assert main(["generate", "--ckpt", str(chat_checkpoint), "--audio", str(path)]) == 2
    assert "no audio encoder" in capsys.readouterr().err
    long = clip(tmp_path / "long.wav", seconds=5.0)
    assert main(["generate", "--ckpt", str(audio_checkpoint), "--audio", str(long)]) == 2
    assert "long.wav is 5.00 s long" in capsys.readouterr().err
    (tmp_path / "bad.wav").write_bytes(b"RIFF....not audio")
    assert main(["generate", "--ckpt", str(audio_checkpoint), "--audio", str(tmp_path / "bad.wav")]) == 2
    assert "could not read audio" in capsys.readouterr().err
    assert main(["generate", "--ckpt", str(audio_checkpoint)]) == 2
    assert "give --prompt" in capsys.readouterr().err


def test_chat_sends_a_clip_with_the_next_message(audio_checkpoint, chat_checkpoint, tmp_path):
    path = clip(tmp_path / "a.wav")
    script = f"/audio {path}\nwhat did I say?\n/audio {path}\n/audio {tmp_path / 'missing.wav'}\n"

    def chat(ckpt):
        return piped_chat(ckpt, script, "--max-new-tokens", "4")

    lines = chat(audio_checkpoint).stdout.splitlines()
    assert lines[0] == "(audio attached to your next message)"
    assert "already has a clip" in lines[2] and "already has a clip" in lines[3]
    assert "no audio encoder" in chat(chat_checkpoint).stdout.splitlines()[0]
