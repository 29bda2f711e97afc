"""Format adapters: one raw dataset row -> ftcli's canonical row, with the recipe's column mapping applied.

Canonical rows: text -> {"text"}; chat and instruction -> {"messages": [{"role", "content"}, ...]};
completion -> {"prompt", "completion"}; preference -> {"prompt", "chosen", "rejected"}.
A malformed row raises BadRow naming the dataset field, so the caller can report file and row.
"""

from __future__ import annotations

from typing import Any

ROLE_ALIASES = {
    "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "bot": "assistant",
    "model": "assistant", "system": "system", "tool": "tool", "function": "tool",
}  # fmt: skip


class BadRow(ValueError):
    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


def canonical_row(fmt: str, row: dict, columns: dict[str, str]) -> dict:
    col = lambda name: columns.get(name, name)
    if fmt == "text":
        return {"text": _text(row, col("text"), allow_empty=True)}  # empty documents are dropped, not errors
    if fmt == "completion":
        return {"prompt": _text(row, col("prompt"), allow_empty=True), "completion": _text(row, col("completion"))}
    if fmt == "instruction":
        return {"messages": _instruction_messages(row, col)}
    if fmt == "chat":
        return {"messages": _messages(row.get(col("messages")), col("messages"), col("role"), col("content"))}
    if fmt == "preference":
        return {k: row.get(col(k)) for k in ("prompt", "chosen", "rejected")}
    raise ValueError(f"unknown format {fmt}")


def _text(row: dict, field: str, allow_empty: bool = False) -> str:
    if field not in row or row[field] is None:
        raise BadRow(field, "missing; map it with data.columns if the dataset names it differently")
    value = row[field]
    if not isinstance(value, str):
        raise BadRow(field, f"expected text, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise BadRow(field, "is empty")
    return value


def _instruction_messages(row: dict, col) -> list[dict]:
    instruction = _text(row, col("instruction"))
    extra = row.get(col("input"))
    if extra is not None and not isinstance(extra, str):
        raise BadRow(col("input"), f"expected text, got {type(extra).__name__}")
    system = row.get(col("system"))
    messages = [{"role": "system", "content": system}] if isinstance(system, str) and system.strip() else []
    user = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": _text(row, col("output"))}]
    return messages


def _messages(value: Any, field: str, role_key: str, content_key: str) -> list[dict]:
    if value is None:
        raise BadRow(field, "missing; map it with data.columns.messages if the dataset names it differently")
    if not isinstance(value, list) or not value:
        raise BadRow(field, "expected a non-empty list of messages")
    out = []
    for i, message in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise BadRow(where, "expected a message object with role and content")
        if role_key not in message:
            raise BadRow(f"{where}.{role_key}", "missing role; map it with data.columns.role")
        role = ROLE_ALIASES.get(str(message[role_key]).lower())
        if role is None:
            raise BadRow(f"{where}.{role_key}", f"unknown role {message[role_key]!r} (use user, assistant, system)")
        content = message.get(content_key)
        if not isinstance(content, str):
            raise BadRow(f"{where}.{content_key}", "missing or not text; map it with data.columns.content")
        if role == "assistant" and not content.strip():
            raise BadRow(f"{where}.{content_key}", "empty assistant answer")
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise BadRow(field, "no assistant message to learn from")
    return out
