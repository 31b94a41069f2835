"""Conversations from the user's files: a .jsonl with one {"messages": [...]} object per line
(each message {"role", "content"}, a user turn optionally with "image" / "audio"), checked
line by line so a bad conversation is reported with its file and line."""

from __future__ import annotations

import json
from pathlib import Path

from quatrix.chat import check_messages


def read_conversations(path: str | Path, *, need_assistant: bool = True) -> list[list[dict]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"conversations not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {e.start})") from None
    conversations = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict) or "messages" not in record:
            raise ValueError(f"{path}:{number}: expected an object with a 'messages' list")
        check_messages(record["messages"], need_assistant=need_assistant, where=f"{path}:{number}")
        conversations.append(record["messages"])
    if not conversations:
        raise ValueError(f"{path} holds no conversations")
    return conversations
