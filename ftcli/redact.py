"""Secrets never leave ftcli: the values of secret-named environment variables (HF_TOKEN, WANDB_API_KEY, ...) and
literals shaped like known tokens (hf_..., sk-..., ghp_...) are masked, by value, in everything ftcli prints or
writes: validate's output, errors, logs, summaries and the frozen recipe. Masking changes only text that leaves;
what the run uses is untouched."""

from __future__ import annotations

import os
import re

MASK = "***"
# A name is secret-looking when one of its _-separated words says so: HF_TOKEN, hub_token, OPENAI_API_KEY,
# DB_PASSWORD; not MAX_TOKENS or TOKENIZER_NAME.
SECRET_NAME = re.compile(
    r"(?:^|_)(?:TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?|(?:API|ACCESS|PRIVATE|SECRET)_?KEY)(?:_|$)",
    re.IGNORECASE,
)
TOKEN_LITERAL = re.compile(
    r"\b(?:hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_-]{20,}|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"
    r"|glpat-[A-Za-z0-9_-]{20,}|xox[abprs]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16})\b"
)
MIN_LENGTH = 6  # shorter values (a "1", "true") would mask ordinary text

_values: set[str] = set()


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


def add(value: str) -> None:
    """Mask `value` from now on wherever it appears."""
    if isinstance(value, str) and len(value) >= MIN_LENGTH:
        _values.add(value)


def add_environment(env=None) -> None:
    """Every secret-named variable of the environment: hub tokens reach libraries (and their error messages)
    without passing through a recipe."""
    for name, value in (os.environ if env is None else env).items():
        if is_secret_name(name):
            add(value)


def mask(text: str) -> str:
    for value in sorted(_values, key=len, reverse=True):
        if value in text:
            text = text.replace(value, MASK)
    return TOKEN_LITERAL.sub(MASK, text)


def mask_tree(value):
    """`mask` over every string of a JSON-like tree."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {k: mask_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_tree(v) for v in value]
    return value


class MaskedStream:
    """A text stream that masks what is written to it (stderr for rich's console and relayed worker output)."""

    def __init__(self, stream_getter):
        self._get = stream_getter

    def write(self, text: str) -> int:
        self._get().write(mask(text))
        return len(text)

    def flush(self) -> None:
        self._get().flush()

    def isatty(self) -> bool:
        return self._get().isatty()

    def fileno(self) -> int:
        return self._get().fileno()

    @property
    def encoding(self):
        return getattr(self._get(), "encoding", "utf-8")
