"""Format adapters: one raw dataset row -> ftcli's canonical row, with the recipe's column mapping applied.

Each format's spec (recipe/registry.py) names its row function here. Canonical rows: text -> {"text"}; chat and
instruction -> {"messages": [{"role", "content"[, "tool_calls"]}, ...][, "tools"]};
completion -> {"prompt", "completion"}; preference -> {"prompt", "chosen", "rejected", "margin"}, where each side is
a string or a message list (see `_preference`). Image formats add {"image", "image_column"} to a completion
(caption), messages (image_instruction, image_chat) or preference (image_preference) row.
A malformed row raises BadRow naming the dataset field, so the caller can report file and row.
"""

from __future__ import annotations

import re
from typing import Any

ROLE_ALIASES = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "tool",
}


class BadRow(ValueError):
    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


def canonical_row(fmt: str, row: dict, columns: dict[str, str]) -> dict:
    """The canonical row of `row` in format `fmt` (its spec's row function: recipe/registry.py)."""
    return row_reader(fmt)(row, columns)


def row_reader(fmt: str):
    from ftcli.recipe.registry import FORMATS, load

    return load(FORMATS[fmt].rows)


def _columns(columns: dict[str, str]):
    return lambda name: columns.get(name, name)


def text_row(row: dict, columns: dict) -> dict:
    return {"text": _text(row, _columns(columns)("text"), allow_empty=True)}  # empty documents are dropped


def completion_row(row: dict, columns: dict) -> dict:
    col = _columns(columns)
    return {
        "prompt": _text(row, col("prompt"), allow_empty=True),
        "completion": _text(row, col("completion")),
    }


def instruction_row(row: dict, columns: dict) -> dict:
    return {"messages": _instruction_messages(row, _columns(columns))}


def chat_row(row: dict, columns: dict) -> dict:
    """Messages, with function calling where the data has it: assistant `tool_calls`, `tool` turns, and the row's
    `tools` (their JSON schemas), all rendered by the chat template."""
    col = _columns(columns)
    out = {"messages": parse_messages(row.get(col("messages")), col("messages"), col("role"), col("content"))}
    tools = row.get(col("tools"))
    if tools is not None:
        out["tools"] = _tools(tools, col("tools"))
    return out


def preference_row(row: dict, columns: dict) -> dict:
    return _preference(row, _columns(columns))


def image_preference_row(row: dict, columns: dict) -> dict:
    """A preference pair about an image (RLAIF-V, VLFeedback style): image, prompt (question), chosen, rejected."""
    col = _columns(columns)
    return {**_image(row, col), **_preference(row, col)}


def _image(row: dict, col) -> dict:
    return {"image": row.get(col("image")), "image_column": col("image")}  # resolved by data/images.py


def caption_row(row: dict, columns: dict) -> dict:
    col = _columns(columns)
    return {**_image(row, col), "prompt": "", "completion": _text(row, col("caption"))}


def image_instruction_row(row: dict, columns: dict) -> dict:
    col = _columns(columns)
    return {**_image(row, col), "messages": _instruction_messages(row, col)}


def image_chat_row(row: dict, columns: dict) -> dict:
    col = _columns(columns)
    names = (col("messages"), col("role"), col("content"))
    if names[0] not in row and "conversations" in row and "messages" not in columns:
        names = ("conversations", "from", "value")  # LLaVA's layout, found without a columns mapping
    return {**_image(row, col), "messages": parse_messages(row.get(names[0]), *names)}


def _tools(value, field: str) -> list[dict]:
    if isinstance(value, str):  # often stored as a JSON string
        import json

        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise BadRow(field, "neither a list of tool schemas nor JSON text of one") from None
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise BadRow(field, "expected a list of tool (function) schemas")
    return value


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
    messages += [
        {"role": "user", "content": user},
        {"role": "assistant", "content": _text(row, col("output"))},
    ]
    return messages


# Anthropic HH-style transcripts: "\n\nHuman: ...\n\nAssistant: ..." in one string.
HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ ]?")


def _preference(row: dict, col) -> dict:
    """Three shapes of pair, all to prompt/chosen/rejected: explicit strings; conversational (message lists, where
    chosen/rejected may repeat the prompt turns, as in UltraFeedback-binarized); and whole transcripts sharing a
    prefix (as in Anthropic HH: no prompt column, the prompt is the common beginning)."""
    sides = {}
    for name in ("chosen", "rejected"):
        value = row.get(col(name))
        if value is None:
            raise BadRow(col(name), "missing; map it with data.columns if the dataset names it differently")
        sides[name] = _side(value, col(name))
    chosen, rejected = sides["chosen"], sides["rejected"]
    prompt = row.get(col("prompt"))
    if isinstance(prompt, str) and not prompt.strip():
        prompt = None
    if prompt is None:  # the prompt is what both transcripts share
        if isinstance(chosen, list) != isinstance(rejected, list):
            raise BadRow(col("chosen"), "chosen and rejected must both be text or both be message lists")
        n = _common_prefix(chosen, rejected)
        if isinstance(chosen, list):  # whole turns only: the answers start at the first differing message
            while n and chosen[n - 1]["role"] == "assistant" and n == min(len(chosen), len(rejected)):
                n -= 1
        if n == 0:
            raise BadRow(col("prompt"), "missing, and chosen/rejected share no beginning to take it from")
        prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    else:
        prompt = _side(prompt, col("prompt"), answers=False)
        if isinstance(chosen, list) or isinstance(rejected, list) or isinstance(prompt, list):
            prompt = _as_messages(prompt, "user")
            chosen, rejected = _as_messages(chosen, "assistant"), _as_messages(rejected, "assistant")
            chosen, rejected = _strip_prefix(chosen, prompt), _strip_prefix(rejected, prompt)
    for name, side in (("chosen", chosen), ("rejected", rejected)):
        text = side if isinstance(side, str) else "".join(m["content"] for m in side)
        if not text.strip():
            raise BadRow(col(name), "is empty (after the shared prompt)")
        if isinstance(side, list) and side[-1]["role"] != "assistant":
            raise BadRow(col(name), "does not end with an assistant answer")
    if chosen == rejected:
        raise BadRow(col("chosen"), "identical to rejected: the pair carries no preference")
    margin = row.get(col("margin"))
    if margin is not None and not isinstance(margin, (int, float)):
        raise BadRow(col("margin"), f"expected a number, got {type(margin).__name__}")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "margin": margin}


def _side(value: Any, field: str, answers: bool = True) -> str | list[dict]:
    if isinstance(value, str):
        if HH_TURN.search(value) and value.lstrip("\n").startswith(("Human:", "Assistant:")):
            return _hh_messages(value)
        return value
    if isinstance(value, list):
        return parse_messages(value, field, "role", "content", require_assistant=False)
    raise BadRow(field, f"expected text or a list of messages, got {type(value).__name__}")


def _hh_messages(text: str) -> list[dict]:
    parts = HH_TURN.split("\n\n" + text.lstrip("\n"))
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[who], "content": said.strip()} for who, said in zip(parts[1::2], parts[2::2])]


def _as_messages(side: str | list[dict], role: str) -> list[dict]:
    return side if isinstance(side, list) else [{"role": role, "content": side}]


def _strip_prefix(side: list[dict], prompt: list[dict]) -> list[dict]:
    return side[len(prompt) :] if side[: len(prompt)] == prompt else side


def _common_prefix(a, b) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def parse_messages(
    value: Any, field: str, role_key: str, content_key: str, require_assistant: bool = True
) -> list[dict]:
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
            raise BadRow(
                f"{where}.{role_key}", f"unknown role {message[role_key]!r} (use user, assistant, system)"
            )
        calls = message.get("tool_calls")
        if calls is not None and (role != "assistant" or not isinstance(calls, list) or not calls):
            raise BadRow(f"{where}.tool_calls", "expected a non-empty list, on an assistant message")
        content = message.get(content_key)
        if content is None and calls:  # an assistant turn that only calls tools
            content = ""
        if not isinstance(content, str):
            raise BadRow(f"{where}.{content_key}", "missing or not text; map it with data.columns.content")
        if role == "assistant" and not content.strip() and not calls:
            raise BadRow(f"{where}.{content_key}", "empty assistant answer")
        parsed = {"role": role, "content": content}
        if calls:
            parsed["tool_calls"] = calls
        if role == "tool":  # which call it answers, as the templates that render tool turns read it
            parsed.update(
                {k: message[k] for k in ("name", "tool_call_id") if isinstance(message.get(k), str)}
            )
        out.append(parsed)
    if require_assistant and not any(m["role"] == "assistant" for m in out):
        raise BadRow(field, "no assistant message to learn from")
    return out
