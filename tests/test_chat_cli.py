"""`quatrix chat` driven through a pipe, and the session behind it."""


import pytest

from quatrix.session import ChatSession
from quatrix.pretrained import load_model_and_tokenizer


from tests.conftest import piped_chat as chat


def test_chat_reads_one_turn_per_line_from_a_pipe(chat_checkpoint):
    out = chat(chat_checkpoint, "/system You are terse.\nhello there\n\nhow are you\n/reset\n/bogus\nhello there\n")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 6  # three replies, two command notes, one unknown-command note (blank lines skipped)
    assert lines[0].startswith("(system message set") and lines[3] == "(conversation cleared)"
    assert lines[4].startswith("(unknown command /bogus")
    assert lines[1] == lines[5]  # greedy, and /reset forgot the conversation: the same answer to a fresh turn


def test_chat_refuses_a_checkpoint_without_a_tokenizer(tmp_path, chat_checkpoint):
    from quatrix import QuatrixLM

    QuatrixLM.from_pretrained(chat_checkpoint).save_pretrained(tmp_path)
    out = chat(tmp_path, "hi\n")
    assert out.returncode == 2 and "no tokenizer" in out.stderr


def test_session_keeps_history_and_drops_the_oldest_turns_when_full(chat_checkpoint):
    model, tok = load_model_and_tokenizer(chat_checkpoint)
    session = ChatSession(model, tok, system="Be brief.", max_new_tokens=8, temperature=0)
    first = "".join(session.reply("hello there"))
    assert [m["role"] for m in session.turns] == ["user", "assistant"] and session.turns[1]["content"]
    assert isinstance(first, str)
    for i in range(12):  # 128-token context: old exchanges must be dropped to make room
        "".join(session.reply(f"how are you today {i}"))
    prompt = session.prompt_ids("one more")
    assert len(prompt) <= model.config.max_seq_len - 8
    assert session.messages("x")[0] == {"role": "system", "content": "Be brief."}
    with pytest.raises(ValueError, match="at most"):
        session.prompt_ids("word " * 400)
    with pytest.raises(ValueError, match="empty"):
        list(session.reply("  "))
