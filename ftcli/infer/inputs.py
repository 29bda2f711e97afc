"""Prompts for `ftcli infer`: --prompt values, a .txt file (one per line), a .jsonl file (`prompt`, `messages`,
or `prompt`/`chosen`/`rejected` for scoring; `image` for caption models, the prompt then optional), --image
paths, or stdin (`-`). Every problem names the file and line."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from ftcli.data.formats import BadRow, parse_messages
from ftcli.errors import DataError


@dataclass
class Item:
    index: int
    fields: dict  # {"prompt": str} | {"messages": [...]} | {"prompt", "response"} | {"prompt", "chosen", "rejected"}
    #               each may carry "image" (an absolute path); {"image"} alone asks a caption model for a caption
    where: str  # "file:line" or "--prompt N"


def read_inputs(prompts: list[str], input_path: str | None, images: list[str] | None = None) -> list[Item]:
    items = []
    for i, prompt in enumerate(prompts):
        _check_text(prompt, f"--prompt {i + 1}")
    if images:  # one prompt for every image, one prompt per image, or captions (no prompt)
        if len(prompts) > 1 and len(prompts) != len(images):
            raise DataError(
                f"{len(images)} --image and {len(prompts)} --prompt: give one prompt for all images, "
                "one per image, or none (captions)"
            )
        for i, image in enumerate(images):
            fields = {"image": _image_path(image, Path.cwd(), f"--image {i + 1}")}
            if prompts:
                fields["prompt"] = prompts[i if len(prompts) > 1 else 0]
            items.append(Item(len(items), fields, f"--image {i + 1}"))
        prompts = []
    for i, prompt in enumerate(prompts):
        items.append(Item(len(items), {"prompt": prompt}, f"--prompt {i + 1}"))
    if input_path:
        name = "<stdin>" if input_path == "-" else input_path
        if input_path == "-":
            text = _utf8(sys.stdin.buffer.read(), name)
        else:
            try:
                text = _utf8(Path(input_path).read_bytes(), name)
            except FileNotFoundError:
                raise DataError("file not found", file=input_path) from None
            except IsADirectoryError:
                raise DataError(
                    "is a folder; give a .txt or .jsonl file of prompts", file=input_path
                ) from None
        as_json = name.endswith(".jsonl") or (input_path == "-" and text.lstrip().startswith("{"))
        for n, line in enumerate(text.splitlines(), 1):
            if as_json and not line.strip():
                continue
            base = Path.cwd() if input_path == "-" else Path(input_path).resolve().parent
            fields = _json_fields(line, name, n, base) if as_json else {"prompt": line}
            if not as_json:
                _check_text(line, f"{name}:{n}")
            items.append(Item(len(items), fields, f"{name}:{n}"))
    return items


def _json_fields(line: str, name: str, n: int, base: Path) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON ({exc.msg})", file=name, row=n) from None
    if not isinstance(row, dict):
        raise DataError("expected a JSON object", file=name, row=n)
    image = {}
    if "image" in row:  # relative to the file, as in training data
        if not isinstance(row["image"], str):
            raise DataError("'image' must be a path", file=name, row=n, field="image")
        image = {"image": _image_path(row["image"], base, f"{name}:{n}")}
        if "prompt" not in row and "messages" not in row:
            return image
    if "messages" in row:
        try:  # the chat format's own checks: roles known, contents text
            messages = parse_messages(row["messages"], "messages", "role", "content", require_assistant=False)
        except BadRow as bad:
            raise DataError(bad.message, file=name, row=n, field=bad.field) from None
        return {"messages": messages, **image}
    if not isinstance(row.get("prompt"), str):
        raise DataError("needs a 'prompt' string or a 'messages' list", file=name, row=n, field="prompt")
    _check_text(row["prompt"], f"{name}:{n}")
    fields = {"prompt": row["prompt"], **image}
    for key in ("response", "chosen", "rejected"):
        if isinstance(row.get(key), str):
            fields[key] = row[key]
    return fields


def _image_path(value: str, base: Path, where: str) -> str:
    path = (base / value).expanduser().resolve()
    if not path.is_file():
        raise DataError(f"{where}: image not found: {value}", file=str(path))
    return str(path)


def _check_text(text: str, where: str) -> None:
    if not text.strip():
        raise DataError(f"{where}: empty prompt")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # bytes that were not UTF-8, smuggled in through the command line
        raise DataError(f"{where}: not valid UTF-8 text; pass prompts as UTF-8") from None


def _utf8(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"not UTF-8 (byte 0x{data[exc.start]:02x}); re-encode the file as UTF-8", file=name, row=line
        ) from None
