import json

import pytest

from conftest import tiny_config
from quatrix import QuatrixLM
from quatrix.pretrained import load_model_and_tokenizer
from quatrix.tokenizer import EOT, SPECIAL_TOKENS, GPT2Tokenizer, load_tokenizer, train_tokenizer

TEXTS = ["Hello world, this is Quatrix.", "Ünïcödé → 数学 and emoji 🎉", "  spaces\n\nand\ttabs  ", "<think>x</think>"]


@pytest.fixture(scope="module")
def gpt2():
    return load_tokenizer("gpt2")


def test_gpt2_ids_match_gpt2(gpt2):
    assert isinstance(gpt2, GPT2Tokenizer)
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.eot_id == 50256  # GPT-2's <|endoftext|>
    assert gpt2.vocab_size == 50256 + len(SPECIAL_TOKENS)
    assert sorted(gpt2.special.values()) == list(range(50256, gpt2.vocab_size))


def test_round_trips(gpt2, tmp_path):
    bpe = train_tokenizer(["the cat sat on the mat. " * 50, "a dog ran after the cat! " * 50], 300, tmp_path / "t")
    for tok in (gpt2, bpe):
        for text in TEXTS:
            assert tok.decode(tok.encode(text)) == text


def test_special_tokens_only_when_allowed(gpt2, tmp_path):
    bpe = train_tokenizer(["plain words here " * 30], 300)
    for tok in (gpt2, bpe):
        ids = tok.encode(f"a {EOT} b")
        assert tok.eot_id not in ids  # user text cannot forge control tokens
        assert tok.decode(ids) == f"a {EOT} b"
        allowed = tok.encode(f"a{EOT}b<think>", allow_special=True)
        assert tok.eot_id in allowed and tok.token_id("<think>") in allowed
    with pytest.raises(ValueError, match="unknown special token"):
        gpt2.token_id("<|nope|>")


def test_trained_tokenizer_saves_and_loads(tmp_path):
    tok = train_tokenizer(["to be or not to be, that is the question " * 40], 320, tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    assert again.vocab_size == tok.vocab_size <= 320
    assert again.encode("to be, or not") == tok.encode("to be, or not")
    assert again.special == tok.special


def test_loading_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer not found"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no tokenizer"):
        load_tokenizer(tmp_path / "empty")
    (tmp_path / "empty" / "tokenizer_meta.json").write_text(json.dumps({"kind": "bpe"}))
    (tmp_path / "empty" / "tokenizer.json").write_text("{garbage")
    with pytest.raises(ValueError, match="could not be loaded"):
        load_tokenizer(tmp_path / "empty")
    with pytest.raises(ValueError, match="vocab_size must exceed"):
        train_tokenizer(["x"], 100)


def test_checkpoint_vocabulary_must_match_tokenizer(tmp_path):
    tok = train_tokenizer(["some words for a tiny vocabulary " * 30], 300)
    model = QuatrixLM(tiny_config(vocab_size=tok.vocab_size))
    model.save_pretrained(tmp_path / "ok")
    tok.save(tmp_path / "ok")
    loaded, loaded_tok = load_model_and_tokenizer(tmp_path / "ok")
    assert loaded.config.vocab_size == loaded_tok.vocab_size
    QuatrixLM(tiny_config(vocab_size=tok.vocab_size + 5)).save_pretrained(tmp_path / "bad")
    tok.save(tmp_path / "bad")
    with pytest.raises(ValueError, match="does not match its tokenizer"):
        load_model_and_tokenizer(tmp_path / "bad")
