import json

import numpy as np
import pytest
import soundfile
import torch

from quatrix.data import speech
from quatrix.data.pairs import PairLoader
from quatrix.data.speech import (AudioTextSource, HELD_OUT_VARIANTS, parse_audio_spec, read_audio_pairs,
                                 speech_corpus, synthesize_clip, voices)
from quatrix.media import pad_waves, read_audio, resample
from quatrix.tasks.transcribe import error_counts, normalise_transcript
from quatrix.tokenizer import load_tokenizer


def test_voices_split_into_disjoint_training_and_held_out_speakers():
    train, held = set(voices("train")), set(voices("eval"))
    assert train and held and not train & held
    assert all(v.rpartition("+")[2] in HELD_OUT_VARIANTS for v in held)
    assert not any(v.rpartition("+")[2] in HELD_OUT_VARIANTS for v in train)
    with pytest.raises(ValueError, match="split"):
        voices("test")


@pytest.mark.parametrize("corpus, pattern", [("spoken-digits", r"^\d( \d){0,2}$"), ("spoken-numbers", r"^\d{1,3}$"),
                                             ("spoken-sentences", r"^the \w+ \w+ \w+ a \w+ \w+$")])
def test_synthesized_clips_are_deterministic_speech_at_16k(corpus, pattern):
    import re

    a, b = synthesize_clip(corpus, 3, "train", 7), synthesize_clip(corpus, 3, "train", 7)
    assert (a.text, a.voice, a.rate, a.pitch) == (b.text, b.voice, b.rate, b.pitch)
    # espeak-ng carries its pitch flutter from clip to clip: the same clip, give or take a few samples
    assert abs(a.wave.numel() - b.wave.numel()) < 0.01 * a.wave.numel()
    assert re.match(pattern, a.text), a.text
    assert a.wave.dtype == torch.float32 and 0.2 < a.wave.numel() / 16000 < 4.0
    assert 0.05 < a.wave.abs().max() <= 1.0  # not silence
    other = synthesize_clip(corpus, 3, "train", 8)
    assert (other.text, other.voice, other.rate) != (a.text, a.voice, a.rate)
    held = synthesize_clip(corpus, 3, "eval", 7)
    assert held.voice in voices("eval")


def test_a_corpus_made_in_two_processes_is_the_same(tmp_path):
    """espeak-ng's noise generator (breathy voices such as +f5) would otherwise follow the clock."""
    import subprocess
    import sys

    script = ("import sys, hashlib; from quatrix.data.speech import speech_corpus; "
              "d = speech_corpus('spoken-digits', 150, 0, sys.argv[1]); "
              "print(hashlib.sha256(d['waves'].tobytes()).hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], capture_output=True, text=True,
                              check=True).stdout for name in ("a", "b")}
    assert len(digests) == 1


def test_clips_at_another_sample_rate_are_resampled():
    clip16, clip8 = synthesize_clip("spoken-digits", 0, "train", 1), synthesize_clip("spoken-digits", 0, "train", 1, 8000)
    assert abs(clip8.wave.numel() * 2 - clip16.wave.numel()) < 0.01 * clip16.wave.numel()


def test_resample_keeps_pitch_and_duration():
    rate = 22050
    t = np.arange(rate) / rate
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    out = resample(tone, rate, 16000)
    assert out.shape == (16000,)
    peak = np.argmax(np.abs(np.fft.rfft(out.numpy())))  # 1 Hz bins over 1 s
    assert abs(peak - 440) <= 1
    assert torch.equal(resample(tone, rate, rate), torch.from_numpy(tone))


def test_draw_clip_says_what_the_synthesized_clip_says():
    for index in range(5):
        spoken, drawn = speech.draw_clip("spoken-numbers", 2, "eval", index)
        clip = synthesize_clip("spoken-numbers", 2, "eval", index)
        assert (drawn.text, drawn.voice, drawn.rate, drawn.pitch) == (clip.text, clip.voice, clip.rate, clip.pitch)


def test_unknown_voice_and_corpus_are_refused():
    with pytest.raises(ValueError, match="no voice"):
        speech.espeak().synthesize("1", "xx-nowhere+f1", 160, 50)
    with pytest.raises(ValueError, match="unknown speech corpus"):
        synthesize_clip("spoken-words", 0, "train", 0)
    with pytest.raises(ValueError, match="unknown option"):
        parse_audio_spec("spoken-digits:n=4,voices=3")
    assert parse_audio_spec("spoken-digits:n=40,max_digits=2") == ("spoken-digits", {"n": 40, "max_digits": 2})


def test_the_espeak_ng_program_is_used_without_the_library(tmp_path, monkeypatch):
    import sys

    fake = tmp_path / "espeak-ng"  # writes a 22,050 Hz WAV of len(text) * 1000 samples to stdout
    fake.write_text(f"#!{sys.executable}\n"
                    "import io, sys, numpy, soundfile\n"
                    "args = sys.argv[1:]\n"
                    "if args[1].startswith('xx'): sys.exit('unknown voice')\n"
                    "buf = io.BytesIO(); soundfile.write(buf, numpy.full(len(args[-1]) * 1000, 0.1), 22050, format='WAV')\n"
                    "sys.stdout.buffer.write(buf.getvalue())\n")
    fake.chmod(0o755)
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # as if the wheel were not installed
    monkeypatch.setattr(speech, "_ENGINE", None)
    monkeypatch.setenv("PATH", str(tmp_path))
    engine = speech.espeak()
    assert isinstance(engine, speech._EspeakProgram)
    wave, rate = engine.synthesize("4 2", "en-us+f3", 150, 40)
    assert rate == 22050 and wave.shape == (3000,)
    with pytest.raises(ValueError, match="unknown voice"):
        engine.synthesize("1", "xx+f1", 150, 40)
    monkeypatch.setattr(speech, "_ENGINE", None)
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    with pytest.raises(RuntimeError, match="pip install espeakng-loader"):
        speech.espeak()


def write_wave(path, seconds=0.5, rate=8000, channels=2):
    t = np.arange(int(seconds * rate)) / rate
    wave = np.stack([0.3 * np.sin(2 * np.pi * 300 * t)] * channels, axis=1)
    soundfile.write(str(path), wave, rate)
    return path


def test_read_audio_makes_mono_16k_from_any_rate_and_format(tmp_path):
    wav = read_audio(write_wave(tmp_path / "a.wav"), 16000)
    assert wav.shape == (8000,) and wav.dtype == torch.float32
    flac = read_audio(write_wave(tmp_path / "b.flac", rate=44100, channels=1), 16000)
    assert flac.shape == (8000,)


def test_read_audio_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        read_audio(tmp_path / "nope.wav")
    (tmp_path / "junk.wav").write_bytes(b"RIFF this is not audio at all" * 10)
    with pytest.raises(ValueError, match="could not read audio .*junk.wav"):
        read_audio(tmp_path / "junk.wav")
    soundfile.write(str(tmp_path / "empty.wav"), np.zeros((0, 1)), 16000)
    with pytest.raises(ValueError, match="empty.wav is empty"):
        read_audio(tmp_path / "empty.wav")
    with pytest.raises(ValueError, match="click.wav has 160 samples, shorter than one 25 ms window"):
        read_audio(write_wave(tmp_path / "click.wav", seconds=0.01), 16000)
    with pytest.raises(ValueError, match="long.wav is 3.00 s long; .* at most 2.0 s"):
        read_audio(write_wave(tmp_path / "long.wav", seconds=3.0), max_seconds=2.0)


def test_audio_pairs_from_a_folder_or_jsonl(tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    write_wave(folder / "one.wav")
    (folder / "one.txt").write_text("one\n")
    write_wave(folder / "two.flac")
    (folder / "two.txt").write_text("two")
    assert [(p.name, t) for p, t in read_audio_pairs(folder)] == [("one.wav", "one"), ("two.flac", "two")]
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"audio": "clips/one.wav", "text": "one"}) + "\n\n")
    assert read_audio_pairs(tmp_path / "pairs.jsonl")[0][1] == "one"
    write_wave(folder / "three.wav")
    with pytest.raises(ValueError, match="three.wav has no transcript"):
        read_audio_pairs(folder)
    (tmp_path / "bad.jsonl").write_text('{"audio": "clips/one.wav"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        read_audio_pairs(tmp_path / "bad.jsonl")
    (tmp_path / "gone.jsonl").write_text(json.dumps({"audio": "gone.wav", "text": "x"}) + "\n")
    with pytest.raises(FileNotFoundError, match="gone.wav"):
        read_audio_pairs(tmp_path / "gone.jsonl")
    with pytest.raises(FileNotFoundError, match="built-in: spoken-digits"):
        read_audio_pairs(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no audio-text pairs"):
        read_audio_pairs(tmp_path / "empty")


def test_a_corpus_is_synthesized_once_then_read_from_the_cache(tmp_path, monkeypatch):
    first = speech_corpus("spoken-digits", 6, 0, tmp_path)
    assert len(first["texts"]) == 6 and first["offsets"][-1] == len(first["waves"])
    assert first["texts"][2] == synthesize_clip("spoken-digits", 0, "train", 2).text

    def refuse(*args, **kwargs):
        raise AssertionError("synthesized again")

    monkeypatch.setattr(speech, "synthesize_clip", refuse)
    again = speech_corpus("spoken-digits", 6, 0, tmp_path)
    assert np.array_equal(again["waves"], first["waves"]) and again["texts"] == first["texts"]
    monkeypatch.undo()
    [cached] = tmp_path.glob("*.npz")
    cached.write_bytes(b"damaged")
    remade = speech_corpus("spoken-digits", 6, 0, tmp_path)  # made again (to within espeak's flutter)
    assert remade["texts"] == first["texts"] and abs(len(remade["waves"]) - len(first["waves"])) < 0.01 * len(
        first["waves"])
    with np.load(cached) as f:
        assert list(f["texts"]) == first["texts"]


def test_audio_text_batches(tmp_path):
    tok = load_tokenizer("gpt2")
    source = AudioTextSource("spoken-digits:n=8", 16000, 4.0, seed=0, cache_dir=tmp_path)
    loader = PairLoader(source, tok, seq_len=12, batch_size=4, seed=0)
    batch = loader.next_batch()
    assert batch["mel_values"].shape[0] == 4 and batch["mel_values"].dim() == 2
    assert batch["input_ids"].shape == (4, 12) and (batch["labels"] != -100).any(dim=1).all()
    wave, text = source.example(0)
    assert tok.decode(tok.encode(text)) == text and wave.numel() > 0
    with pytest.raises(ValueError, match="longest clip is .* longer than the model's 0.3 s"):
        AudioTextSource("spoken-digits:n=8", 16000, 0.3, seed=0, cache_dir=tmp_path)


def test_user_clips_are_checked_when_read(tmp_path):
    write_wave(tmp_path / "long.wav", seconds=3.0)
    (tmp_path / "long.txt").write_text("long")
    source = AudioTextSource(str(tmp_path), 16000, 2.0)
    with pytest.raises(ValueError, match="long.wav is 3.00 s"):
        source.example(0)


def test_pad_waves_follows_each_clip_with_silence():
    out = pad_waves([torch.ones(3), torch.ones(5)])
    assert out.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]


@pytest.mark.parametrize("ref, hyp, unit, expected", [
    ("4 2 7", "4 2 7", "word", (0, 3)), ("4 2 7", "4 7", "word", (1, 3)), ("4 2 7", "1 4 2 7 7", "word", (2, 3)),
    ("4 2 7", "", "word", (3, 3)), ("the red dog", "the bed dog", "char", (1, 11)), ("", "x y", "word", (2, 0)),
])
def test_error_counts_are_edit_distances(ref, hyp, unit, expected):
    assert error_counts(ref, hyp, unit) == expected


def test_transcripts_are_compared_without_case_or_punctuation():
    assert normalise_transcript("  The red,  DOG! ") == "the red dog"
