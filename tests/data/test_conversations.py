import json

import pytest

from quatrix.data.conversations import read_conversations


def test_reads_conversations_and_names_the_bad_line(tmp_path):
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(good) + "\n")
    assert read_conversations(path) == [good["messages"]] * 2
    path.write_text(json.dumps(good) + "\n" + json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(ValueError, match=r"c.jsonl:2: no assistant turn"):
        read_conversations(path)
    assert len(read_conversations(path, need_assistant=False)) == 2
    for text, message in [("{bad", "c.jsonl:1: not valid JSON"), ('{"turns": []}', "c.jsonl:1: expected an object"),
                          ("", "holds no conversations")]:
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_conversations(path)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_conversations(path)
    with pytest.raises(FileNotFoundError, match="conversations not found"):
        read_conversations(tmp_path / "none.jsonl")
