"""Prompts for `ftcli infer`: --prompt values, a .txt file (one per line), a .jsonl file (`prompt`, `messages`,
or `prompt`/`chosen`/`rejected` for scoring), or stdin (`-`). Every problem names the file and line."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from ftcli.errors import DataError


@dataclass
class Item:
    index: int
    fields: dict  # {"prompt": str} | {"messages": [...]} | {"prompt", "response"} | {"prompt", "chosen", "rejected"}
    where: str  # "file:line" or "--prompt N"


def read_inputs(prompts: list[str], input_path: str | None) -> list[Item]:
    items = []
    for i, prompt in enumerate(prompts):
        _check_text(prompt, f"--prompt {i + 1}")
        items.append(Item(len(items), {"prompt": prompt}, f"--prompt {i + 1}"))
    if input_path:
        name = "<stdin>" if input_path == "-" else input_path
        if input_path == "-":
            text = sys.stdin.read()
        else:
            try:
                text = Path(input_path).read_text(encoding="utf-8")
            except FileNotFoundError:
                raise DataError("file not found", file=input_path) from None
        as_json = name.endswith(".jsonl") or (input_path == "-" and text.lstrip().startswith("{"))
        for n, line in enumerate(text.splitlines(), 1):
            if as_json and not line.strip():
                continue
            fields = _json_fields(line, name, n) if as_json else {"prompt": line}
            if not as_json:
                _check_text(line, f"{name}:{n}")
            items.append(Item(len(items), fields, f"{name}:{n}"))
    return items


def _json_fields(line: str, name: str, n: int) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON ({exc.msg})", file=name, row=n) from None
    if not isinstance(row, dict):
        raise DataError("expected a JSON object", file=name, row=n)
    if isinstance(row.get("messages"), list) and row["messages"]:
        return {"messages": row["messages"]}
    if not isinstance(row.get("prompt"), str):
        raise DataError("needs a 'prompt' string or a 'messages' list", file=name, row=n, field="prompt")
    _check_text(row["prompt"], f"{name}:{n}")
    fields = {"prompt": row["prompt"]}
    for key in ("response", "chosen", "rejected"):
        if isinstance(row.get(key), str):
            fields[key] = row[key]
    return fields


def _check_text(text: str, where: str) -> None:
    if not text.strip():
        raise DataError(f"{where}: empty prompt")
