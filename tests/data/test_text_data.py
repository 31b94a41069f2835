import json

import numpy as np
import pytest

from quatrix.data.text import (TokenLoader, load_tokens, prepare_tokens, read_documents, split_documents)
from quatrix.tokenizer import train_tokenizer

WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly hum".split()


def corpus_text(n_lines=400, seed=0):
    rng = np.random.default_rng(seed)
    return "\n".join(" ".join(rng.choice(WORDS, 8)) for _ in range(n_lines)) + "\n"


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([corpus_text()], 300)


def test_reads_txt_jsonl_and_folders(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("first document")
    (tmp_path / "d" / "b.jsonl").write_text('{"text": "second"}\n\n{"text": "third"}\n')
    (tmp_path / "d" / "ignored.bin").write_bytes(b"\x00\x01")
    assert read_documents(tmp_path / "d") == ["first document", "second", "third"]
    assert read_documents(tmp_path / "d" / "b.jsonl") == ["second", "third"]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.txt", b"  \n", "empty.txt is empty"),
        ("bad.jsonl", b'{"text": "ok"}\n{not json}\n', "bad.jsonl:2: not valid JSON"),
        ("field.jsonl", b'{"body": "no text field"}\n', "field.jsonl:1: expected an object with a string field 'text'"),
        ("latin1.txt", "caf\xe9".encode("latin-1"), "latin1.txt \\(byte 3\\): not UTF-8"),
        ("latin1.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n', "latin1.jsonl:2: not UTF-8"),
        ("data.csv", b"a,b\n", "unsupported file type"),
    ],
)
def test_bad_data_names_the_file(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_documents(tmp_path / name)


def test_missing_data():
    with pytest.raises(FileNotFoundError, match="data not found: nowhere.txt \\(named corpora: shakespeare"):
        read_documents("nowhere.txt")


def test_builtin_corpora_load_offline():
    plays = read_documents("shakespeare")
    assert len(plays) >= 40 and sum(map(len, plays)) > 4_000_000
    assert any("To be, or not to be" in p for p in plays) and not any("\r\n" in p for p in plays)
    chats = read_documents("chitchat")
    assert len(chats) == 7168


def test_split_is_deterministic_and_disjoint():
    docs = [corpus_text(300, seed=s) for s in range(3)]
    train, val = split_documents(docs)
    assert (train, val) == split_documents(docs)
    assert len(val) > 0 and len(train) > 10 * len(val)
    assert "".join(train + val).count("\n") == "".join(docs).count("\n")


def test_token_files_are_built_once(tmp_path, tokenizer):
    (tmp_path / "c.txt").write_text(corpus_text())
    paths = prepare_tokens([str(tmp_path / "c.txt")], tokenizer, tmp_path / "cache")
    mtime = paths["train"].stat().st_mtime_ns
    assert prepare_tokens([str(tmp_path / "c.txt")], tokenizer, tmp_path / "cache") == paths
    assert paths["train"].stat().st_mtime_ns == mtime
    tokens = load_tokens(paths["train"], tokenizer.vocab_size)
    assert tokens.dtype == np.uint16 and tokens[-1] == tokenizer.eot_id
    train, _ = split_documents([corpus_text()])
    assert list(tokens[: len(tokenizer.encode(train[0])) + 1]) == tokenizer.encode(train[0]) + [tokenizer.eot_id]
    meta = json.loads((paths["train"].parent / "meta.json").read_text())
    assert meta["tokens"]["train"] == len(tokens)


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "meta", "odd_bytes"])
def test_a_damaged_token_cache_is_rebuilt(tmp_path, tokenizer, capsys, damage):
    (tmp_path / "c.txt").write_text(corpus_text())
    paths = prepare_tokens([str(tmp_path / "c.txt")], tokenizer, tmp_path / "cache")
    good = paths["train"].read_bytes()
    if damage == "truncate":
        paths["train"].write_bytes(good[: len(good) // 2])
    elif damage == "flip":
        data = bytearray(good)
        data[10] ^= 0x01
        paths["train"].write_bytes(bytes(data))
    elif damage == "delete":
        paths["val"].unlink()
    elif damage == "meta":
        (paths["train"].parent / "meta.json").write_text("{not json")
    else:
        paths["train"].write_bytes(good + b"\x01")
    assert prepare_tokens([str(tmp_path / "c.txt")], tokenizer, tmp_path / "cache") == paths
    assert "rebuilding it" in capsys.readouterr().err
    assert paths["train"].read_bytes() == good


def test_load_tokens_checks_the_file_once(tmp_path):
    path = tmp_path / "t.bin"
    np.array([1, 2, 300], dtype=np.uint16).tofile(path)
    with pytest.raises(ValueError, match="token id 300, outside the vocabulary"):
        load_tokens(path, 300)
    path.write_bytes(b"\x01\x00\x02")
    with pytest.raises(ValueError, match="truncated"):
        load_tokens(path, 300)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="no tokens"):
        load_tokens(path, 300)
    with pytest.raises(FileNotFoundError, match="token file not found"):
        load_tokens(tmp_path / "none.bin", 300)


def test_loader_is_seeded_sharded_and_resumable():
    tokens = np.arange(1000, dtype=np.uint16)
    single = TokenLoader(tokens, 10, 4, seed=1)
    ranks = [TokenLoader(tokens, 10, 2, seed=1, rank=r, world_size=2) for r in range(2)]
    for _ in range(30):  # crosses several epochs
        batch = single.next_batch()
        assert batch.shape == (4, 10) and (batch[:, 1:] - batch[:, :-1] == 1).all()
        assert (batch[:2] == ranks[0].next_batch()).all() and (batch[2:] == ranks[1].next_batch()).all()
    state = single.state_dict()
    expected = [single.next_batch() for _ in range(5)]
    resumed = TokenLoader(tokens, 10, 4, seed=1)
    resumed.load_state_dict(state)
    assert all((resumed.next_batch() == e).all() for e in expected)
    assert not (TokenLoader(tokens, 10, 4, seed=2).next_batch() == TokenLoader(tokens, 10, 4, seed=1).next_batch()).all()
    with pytest.raises(ValueError, match="fewer than one batch"):
        TokenLoader(tokens[:50], 10, 8)
