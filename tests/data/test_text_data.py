import json

import numpy as np
import pytest

from quatrix.data.shards import ShardedTokens, write_manifest, write_tokens
from quatrix.data.text import TokenLoader, prepare_tokens, read_documents, split_documents
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


def test_token_files_are_built_once_in_the_shard_format(tmp_path, tokenizer):
    (tmp_path / "c.txt").write_text(corpus_text())
    folder = prepare_tokens([str(tmp_path / "c.txt")], tokenizer, tmp_path / "cache")
    mtime = (folder / "train_00000.bin").stat().st_mtime_ns
    assert prepare_tokens([str(tmp_path / "c.txt")], tokenizer, tmp_path / "cache") == folder
    assert (folder / "train_00000.bin").stat().st_mtime_ns == mtime
    tokens = ShardedTokens(folder, "train", tokenizer.vocab_size)
    assert tokens.dtype == np.uint16 and tokens[-1:][0] == tokenizer.eot_id
    train, _ = split_documents([corpus_text()])
    assert list(tokens[: len(tokenizer.encode(train[0])) + 1]) == tokenizer.encode(train[0]) + [tokenizer.eot_id]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["tokens"]["train"] == len(tokens) and manifest["vocab_size"] == tokenizer.vocab_size


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "manifest", "odd_bytes"])
def test_a_damaged_token_cache_is_rebuilt(tmp_path, tokenizer, capsys, damage):
    (tmp_path / "c.txt").write_text(corpus_text())
    folder = prepare_tokens([str(tmp_path / "c.txt")], tokenizer, tmp_path / "cache")
    train = folder / "train_00000.bin"
    good = train.read_bytes()
    if damage == "truncate":
        train.write_bytes(good[: len(good) // 2])
    elif damage == "flip":
        data = bytearray(good)
        data[10] ^= 0x01
        train.write_bytes(bytes(data))
    elif damage == "delete":
        (folder / "val_00000.bin").unlink()
    elif damage == "manifest":
        (folder / "manifest.json").write_text("{not json")
    else:
        train.write_bytes(good + b"\x01")
    assert prepare_tokens([str(tmp_path / "c.txt")], tokenizer, tmp_path / "cache") == folder
    assert "rebuilding it" in capsys.readouterr().err
    assert train.read_bytes() == good


def test_sharded_tokens_are_checked_once(tmp_path):
    tokens = np.array([1, 2, 300], dtype=np.uint16)
    shards = write_tokens(tmp_path, "train", tokens)
    write_manifest(tmp_path, {"vocab_size": 300, "dtype": "uint16", "shards": shards})
    with pytest.raises(ValueError, match="token id 300, outside the vocabulary"):
        ShardedTokens(tmp_path, "train", 300)
    with pytest.raises(ValueError, match="prepared with a 300-token vocabulary; this model.s tokenizer has 301"):
        ShardedTokens(tmp_path, "train", 301)
    (tmp_path / "train_00000.bin").write_bytes(b"\x01\x00\x02")
    with pytest.raises(ValueError, match="has 3 bytes, not the 3 tokens recorded"):
        ShardedTokens(tmp_path, "train", 300)
    with pytest.raises(ValueError, match="no val tokens"):
        ShardedTokens(tmp_path, "val", 300)
    (tmp_path / "manifest.json").write_text("[]")
    with pytest.raises(ValueError, match="is damaged"):
        ShardedTokens(tmp_path, "train", 300)
    with pytest.raises(FileNotFoundError, match="is not a prepared folder"):
        ShardedTokens(tmp_path / "none", "train", 300)


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
