import json

import pytest
import torch

from quatrix.data.sft import (ConversationSource, SFTLoader, chitchat_conversations, collate, is_validation,
                              render_example)
from quatrix.config import preset
from quatrix.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("gpt2")


def write_jsonl(path, conversations):
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations))
    return path


def conversation(i, words=3):
    return [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": " ".join(["yes"] * words)}]


def test_labels_are_the_assistant_tokens_and_padding_is_ignored(tok):
    examples = [render_example(conversation(1), tok), render_example(conversation(2, words=6), tok)]
    batch = collate(examples, pad_id=tok.eot_id)
    ids, labels = batch["input_ids"], batch["labels"]
    assert ids.shape == (2, len(examples[1].ids))
    for row, e in zip(range(2), examples):
        learned = [t for t, m in zip(e.ids, e.mask) if m]
        assert labels[row][labels[row] != -100].tolist() == learned
        assert learned[-1] == tok.token_id("<|end|>")
    assert (labels[0, len(examples[0].ids):] == -100).all()  # padding carries no loss


def test_long_conversations_are_skipped_and_counted(tmp_path, tok):
    path = write_jsonl(tmp_path / "c.jsonl", [conversation(i) for i in range(40)] + [conversation(99, words=200)])
    messages = []
    source = ConversationSource(str(path), tok, seq_len=64, log=messages.append)
    assert source.skipped == 1 and "skipped 1 of 41" in messages[0]
    assert len(source.train) + len(source.val) == 40
    with pytest.raises(ValueError, match="no conversation fits"):
        ConversationSource(str(path), tok, seq_len=8, log=messages.append)


def test_file_loader_is_seeded_sharded_and_resumable(tmp_path, tok):
    path = write_jsonl(tmp_path / "c.jsonl", [conversation(i) for i in range(64)])
    source = ConversationSource(str(path), tok, seq_len=64)
    a = SFTLoader(source, 4, tok.eot_id, seed=1)
    first = [a.next_batch()["input_ids"] for _ in range(3)]
    state = a.state_dict()
    after = [a.next_batch()["input_ids"] for _ in range(20)]  # crosses an epoch
    b = SFTLoader(source, 4, tok.eot_id, seed=1)
    b.load_state_dict(state)
    assert all(torch.equal(x, y) for x, y in zip(after, [b.next_batch()["input_ids"] for _ in range(20)]))
    rank0 = SFTLoader(source, 4, tok.eot_id, seed=1, rank=0, world_size=2).next_batch()["input_ids"]
    rank1 = SFTLoader(source, 4, tok.eot_id, seed=1, rank=1, world_size=2).next_batch()["input_ids"]
    assert not torch.equal(rank0[:, :5], rank1[:, :5]) and torch.equal(rank0, first[0])


def test_task_stream_renders_the_target_and_resumes(tok):
    source = ConversationSource("task:chain_sum:max_terms=2,max_digits=1", tok, seq_len=128)
    loader = SFTLoader(source, 3, tok.eot_id)
    batch = loader.next_batch()
    text = tok.decode([t for t in batch["labels"][0].tolist() if t != -100])
    assert text.startswith("<think></think><answer>") and text.endswith("</answer><|end|>")
    state = loader.state_dict()
    nxt = loader.next_batch()["input_ids"]
    again = SFTLoader(source, 3, tok.eot_id)
    again.load_state_dict(state)
    assert torch.equal(again.next_batch()["input_ids"], nxt)
    assert len(source.validation(5)) == 5


def test_images_in_conversations_are_loaded_relative_to_the_file(tmp_path, tok):
    from PIL import Image

    Image.new("RGB", (20, 10), (200, 0, 0)).save(tmp_path / "red.png")
    convs = [[{"role": "user", "content": f"colour {i}?", "image": "red.png"}, {"role": "assistant", "content": "red"}]
             for i in range(8)]
    source = ConversationSource(str(write_jsonl(tmp_path / "v.jsonl", convs)), tok, seq_len=64)
    batch = SFTLoader(source, 2, tok.eot_id, preset("tiny", image_size=16)).next_batch()
    assert batch["pixel_values"].shape == (2, 3, 16, 16)
    mixed = convs[:4] + [conversation(1)] * 4
    with pytest.raises(ValueError, match="every conversation carries image or none"):
        ConversationSource(str(write_jsonl(tmp_path / "m.jsonl", mixed)), tok, seq_len=64)
    missing = [[{"role": "user", "content": "?", "image": "nope.png"}, {"role": "assistant", "content": "x"}]]
    with pytest.raises(FileNotFoundError, match="nope.png"):
        ConversationSource(str(write_jsonl(tmp_path / "x.jsonl", missing)), tok, seq_len=64)


def test_a_source_too_small_to_hold_out_trains_on_everything(tmp_path, tok):
    held = [c for c in (conversation(i) for i in range(200)) if is_validation(c)]
    messages = []
    source = ConversationSource(str(write_jsonl(tmp_path / "few.jsonl", held[:3])), tok, seq_len=64,
                                log=messages.append)
    assert len(source.train) == 3 and "too few conversations" in messages[0]


def test_bad_sources_are_named(tmp_path, tok):
    with pytest.raises(FileNotFoundError, match="conversations not found: .*missing.jsonl"):
        ConversationSource(str(tmp_path / "missing.jsonl"), tok, seq_len=64)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1: no assistant turn"):
        ConversationSource(str(bad), tok, seq_len=64)
    with pytest.raises(ValueError, match="unknown task"):
        ConversationSource("task:no_such_task", tok, seq_len=64)


def test_chitchat_becomes_alternating_user_assistant_turns():
    conversations = chitchat_conversations()
    assert len(conversations) > 7000
    for messages in conversations[:200]:
        assert messages[0]["role"] == "user" and 2 <= len(messages) <= 6
        assert all(a["role"] != b["role"] for a, b in zip(messages, messages[1:]))
