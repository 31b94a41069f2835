"""Property-based fuzzing of everything that reads a user's files: any input either loads or
fails with a clear error (ValueError / FileNotFoundError naming the file), nothing hangs
(each example has a deadline), and nothing half-written is left behind."""

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quatrix import QuatrixLM
from quatrix.config import QuatrixConfig
from quatrix.data.images import read_image_pairs
from quatrix.data.text import prepare_tokens, read_documents
from quatrix.tokenizer import load_tokenizer, train_tokenizer
from quatrix.media import load_image

CLEAR = (ValueError, FileNotFoundError)
FUZZ = settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)
json_lines = st.lists(st.one_of(json_values.map(json.dumps), st.text(max_size=40), st.just("")), max_size=6)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_tokenizer(["plenty of ordinary words to learn merges from " * 40], 300,
                           tmp_path_factory.mktemp("tok"))


def fresh(tmp_path_factory, name: str) -> Path:
    return tmp_path_factory.mktemp("fuzz") / name


def assert_documents_or_named_error(path: Path) -> None:
    try:
        docs = read_documents(path)
    except CLEAR as e:
        assert str(path) in str(e)
        return
    assert all(isinstance(d, str) for d in docs)


@FUZZ
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".txt", ".md", ".jsonl", ".rst"]))
def test_text_files(tmp_path_factory, data, suffix):
    path = fresh(tmp_path_factory, "doc" + suffix)
    path.write_bytes(data)
    assert_documents_or_named_error(path)


@FUZZ
@given(lines=json_lines)
def test_jsonl_text_records(tmp_path_factory, lines):
    path = fresh(tmp_path_factory, "docs.jsonl")
    path.write_text("\n".join(lines))
    assert_documents_or_named_error(path)


@FUZZ
@given(lines=json_lines, tokens_ok=st.booleans())
def test_token_cache_is_never_left_half_built(tmp_path_factory, tokenizer, lines, tokens_ok):
    root = tmp_path_factory.mktemp("cache")
    path = root / "docs.jsonl"
    path.write_text("\n".join(lines + ([json.dumps({"text": "some words " * 50})] if tokens_ok else [])))
    try:
        folder = prepare_tokens([str(path)], tokenizer, root / "cache")
    except CLEAR:
        leftovers = [p for p in (root / "cache").rglob("*") if p.is_file()] if (root / "cache").exists() else []
        assert leftovers == []  # no token file without its sealing manifest.json, no temporary file
        return
    manifest = json.loads((folder / "manifest.json").read_text())
    assert {s["split"] for s in manifest["shards"]} == {"train", "val"}
    assert all((folder / s["file"]).is_file() for s in manifest["shards"])


pair_records = st.fixed_dictionaries({"image": st.one_of(st.just("a.png"), json_values),
                                      "text": st.one_of(st.text(max_size=20), json_values)}).map(json.dumps)


@FUZZ
@given(lines=st.lists(st.one_of(pair_records, json_values.map(json.dumps), st.text(max_size=30)), max_size=5),
       make_image=st.booleans(), raw=st.one_of(st.none(), st.binary(max_size=100)))
def test_image_text_pairs(tmp_path_factory, lines, make_image, raw):
    root = tmp_path_factory.mktemp("pairs")
    if make_image:
        (root / "a.png").write_bytes(b"\x89PNG not really")
    path = root / "pairs.jsonl"
    if raw is None:
        path.write_text("\n".join(lines))
    else:
        path.write_bytes(raw)
    try:
        pairs = read_image_pairs(path)
    except CLEAR as e:
        assert str(path) in str(e)
        return
    assert all(isinstance(text, str) and image.is_file() for image, text in pairs)
    for image, _ in pairs:
        with pytest.raises(ValueError, match="could not read image"):
            load_image(image, 16)


@FUZZ
@given(data=st.binary(max_size=300))
def test_image_files(tmp_path_factory, data):
    path = fresh(tmp_path_factory, "image.png")
    path.write_bytes(data)
    with pytest.raises(ValueError, match="could not read image"):
        load_image(path, 16)


@FUZZ
@given(meta=json_values, body=st.binary(max_size=300))
def test_tokenizer_folders(tmp_path_factory, meta, body):
    root = tmp_path_factory.mktemp("tokdir")
    (root / "tokenizer_meta.json").write_text(json.dumps(meta))
    (root / "tokenizer.json").write_bytes(body)
    try:
        tok = load_tokenizer(root)
    except CLEAR as e:
        assert str(root) in str(e)
        return
    assert tok.vocab_size > 0


@FUZZ
@given(text=st.text(max_size=200))
def test_tokenizer_round_trips_any_text(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


@FUZZ
@given(data=json_values)
def test_config_files(tmp_path_factory, data):
    path = fresh(tmp_path_factory, "config.json")
    path.write_text(json.dumps(data))
    try:
        config = QuatrixConfig.from_json(path)
    except CLEAR as e:
        assert str(e)  # a message, never a bare exception
        return
    assert QuatrixConfig.from_dict(config.to_dict()) == config


@FUZZ
@given(body=st.binary(max_size=200))
def test_weight_files(tmp_path_factory, body):
    root = tmp_path_factory.mktemp("ckpt")
    QuatrixConfig(vocab_size=97, hidden_size=32, num_layers=1, max_seq_len=16, q_rank=8).to_json(root / "config.json")
    (root / "model.safetensors").write_bytes(body)
    with pytest.raises(ValueError, match="model.safetensors"):
        QuatrixLM.from_pretrained(root)


messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "bot"]),
                                           "content": st.one_of(st.text(max_size=20), json_values)}), max_size=4)


@FUZZ
@given(lines=st.lists(st.one_of(st.fixed_dictionaries({"messages": st.one_of(messages, json_values)}).map(json.dumps),
                                json_values.map(json.dumps), st.text(max_size=30)), max_size=4))
def test_conversation_files(tmp_path_factory, tokenizer, lines):
    from quatrix.chat import render
    from quatrix.data.conversations import read_conversations

    path = fresh(tmp_path_factory, "chat.jsonl")
    path.write_text("\n".join(lines))
    try:
        conversations = read_conversations(path)
    except CLEAR as e:
        assert str(path) in str(e)
        return
    for conversation in conversations:
        ids, mask = render(conversation, tokenizer)
        assert len(ids) == len(mask) and any(mask)
