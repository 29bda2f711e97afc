"""Canonical rows -> input_ids + labels, with loss only where the recipe wants it.

Chat rows are rendered with the chat template. The assistant spans are found by rendering each conversation
prefix (up to the assistant turn, with the generation prompt) and the turn itself: the characters in between are
the answer plus the template's end-of-turn marker, and exactly those tokens are labels. This works with any chat
template that renders prefixes consistently, without `{% generation %}` markers.

Used as a batched `datasets.map` function, so it must stay picklable (num_proc > 1).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from ftcli.data.formats import BadRow, row_reader
from ftcli.data.images import ImageRows
from ftcli.data.templates import check_renders_tools, render_chat
from ftcli.recipe.registry import FORMATS

IGNORE = -100
OK, TRUNCATED, SPLIT = "ok", "truncated", "split"
DROPPED_OVERLONG, DROPPED_NO_LABELS, BAD = "dropped:overlong", "dropped:no_labels", "bad"


_MAX_TOKEN_CHARS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def max_token_chars(tokenizer) -> int:
    """An upper bound on the characters one token stands for (its longest vocabulary string): a text longer than
    N times this is surely over N tokens, without tokenizing it."""
    if tokenizer not in _MAX_TOKEN_CHARS:
        _MAX_TOKEN_CHARS[tokenizer] = max((len(token) for token in tokenizer.get_vocab()), default=1)
    return _MAX_TOKEN_CHARS[tokenizer]


def char_budget(tokenizer, tokens: int) -> int:
    """Characters of one text that can matter for `tokens` tokens (with a margin for a token cut at the end)."""
    return (tokens + 16) * max_token_chars(tokenizer)


def cap_text(text: str, budget: int, keep_end: bool = False) -> str:
    """A message longer than any row can hold is cut before it is tokenized: the tokens kept are the same, and a
    20 MB message costs no more than a full row (instead of minutes and gigabytes)."""
    if len(text) <= budget:
        return text
    return text[-budget:] if keep_end else text[:budget]


@dataclass
class RowTokenizer:
    tokenizer: object
    fmt: str
    columns: dict
    template: str
    train_on: str  # completion | all
    max_length: int
    overlong: str  # truncate | drop
    images: ImageRows | None = None  # image formats (task: caption): rows also carry their image's path

    def __post_init__(self):
        self.encoding = FORMATS[self.fmt].encoding  # text | completion | chat (recipe/registry.py)
        self.read_row = row_reader(self.fmt)

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        names = list(batch)
        rows = [dict(zip(names, values)) for values in zip(*batch.values())]
        out: dict[str, list] = {
            k: [] for k in ("input_ids", "labels", "status", "raw_length", "__row", "error")
        }
        if self.images:
            out["image"] = []
        canon, errors = [], []
        for row in rows:
            try:
                c = self._bounded(self.read_row(row, self.columns))
                if self.images:
                    c = self._with_image(c)
                canon.append(c)
                errors.append(None)
            except BadRow as bad:
                canon.append(None)
                errors.append(f"field '{bad.field}': {bad.message}")
        encoded = self._encode([c for c in canon if c is not None])
        it = iter(encoded)
        for row, c, error in zip(rows, canon, errors):
            pieces = [] if c is None else next(it)
            if isinstance(pieces, BadRow):
                error, pieces = f"field '{pieces.field}': {pieces.message}", []
            if error:
                self._emit(out, row, [], [], BAD, 0, error)
                continue
            for ids, labels, status, raw in pieces:
                self._emit(out, row, ids, labels, status, raw, None, c.get("image"))
        return out

    def _bounded(self, c: dict) -> dict:
        """Every text but pretraining documents (which are split, every token kept) cut to what a row can hold."""
        if self.encoding == "text":
            return c
        budget = char_budget(self.tokenizer, self.max_length)
        if "messages" in c:
            c["messages"] = [{**m, "content": cap_text(m["content"], budget)} for m in c["messages"]]
        for key in ("prompt", "completion"):
            if isinstance(c.get(key), str):
                c[key] = cap_text(c[key], budget)
        return c

    def _with_image(self, c: dict) -> dict:
        c["image"] = self.images.resolve(c["image"], c.pop("image_column"))
        if "messages" in c:
            c["messages"] = self.images.strip_placeholder(c["messages"])
        else:
            c["prompt"] = self.images.caption_prompt
        return c

    @staticmethod
    def _emit(out, row, ids, labels, status, raw, error, image=None):
        if "image" in out:
            out["image"].append(image or "")
        out["input_ids"].append(ids)
        out["labels"].append(labels)
        out["status"].append(status)
        out["raw_length"].append(raw)
        out["__row"].append(row.get("__row", 0))
        out["error"].append(error)

    # --- encoders: each returns, per canonical row, a list of (ids, labels, status, raw_length) or a BadRow ---

    def _encode(self, canon: list[dict]) -> list:
        if self.encoding == "text":
            return self._encode_text(canon)
        if self.encoding == "completion":
            return self._encode_completion(canon)
        return self._encode_chat(canon)

    def _encode_text(self, canon: list[dict]) -> list:
        tok = self.tokenizer
        encoded = tok([c["text"] for c in canon])["input_ids"] if canon else []
        results = []
        for c, ids in zip(canon, encoded):
            if not c["text"].strip():  # e.g. WikiText's blank lines: nothing to learn, counted as dropped
                results.append([([], [], DROPPED_NO_LABELS, 0)])
                continue
            if not ids or ids[-1] != tok.eos_token_id:
                ids = ids + [tok.eos_token_id]
            # Pretraining keeps every token: long documents become several max_length pieces.
            chunks = [ids[i : i + self.max_length] for i in range(0, len(ids), self.max_length)]
            status = SPLIT if len(chunks) > 1 else OK
            results.append([(c, list(c), status, len(ids)) for c in chunks if len(c) > 1])
        return results

    def _encode_completion(self, canon: list[dict]) -> list:
        tok = self.tokenizer
        if not canon:
            return []
        prompts = tok([c["prompt"] for c in canon])["input_ids"]
        completions = tok([c["completion"] for c in canon], add_special_tokens=False)["input_ids"]
        results = []
        for p, c in zip(prompts, completions):
            c = c + [tok.eos_token_id]
            ids = p + c
            labels = ids if self.train_on == "all" else [IGNORE] * len(p) + c
            results.append(self._fit(*self._begin(ids, labels)))
        return results

    def _encode_chat(self, canon: list[dict]) -> list:
        texts, spans, failures = [], [], {}
        for i, c in enumerate(canon):
            try:
                text, row_spans = self._render(c["messages"], c.get("tools"))
            except BadRow as bad:
                failures[i] = bad
                text, row_spans = "", []
            texts.append(text)
            spans.append(row_spans)
        if not texts:
            return []
        enc = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        special = set(self.tokenizer.all_special_ids)
        results = []
        for i, (ids, offsets, row_spans) in enumerate(zip(enc["input_ids"], enc["offset_mapping"], spans)):
            if i in failures:
                results.append(failures[i])
                continue
            if self.train_on == "all":
                labels = list(ids)
            else:
                labels = [
                    t if any(s <= o[0] < e for s, e in row_spans) else IGNORE for t, o in zip(ids, offsets)
                ]
            # A model must learn to stop: if the template ends the last answer without any special (end-of-turn)
            # token and nothing follows it, append EOS as a label.
            if row_spans and row_spans[-1][1] == len(texts[i]):
                start = row_spans[-1][0]
                span_ids = [t for t, o in zip(ids, offsets) if o[0] >= start]
                if not any(t in special for t in span_ids):
                    ids, labels = ids + [self.tokenizer.eos_token_id], labels + [self.tokenizer.eos_token_id]
            results.append(self._fit(*self._begin(ids, labels)))
        return results

    def _render(self, messages: list[dict], tools: list | None = None) -> tuple[str, list[tuple[int, int]]]:
        calls = any("tool_calls" in m for m in messages)
        if tools or calls:
            check_renders_tools(self.tokenizer, self.template, calls, bool(tools))
        return render_with_spans(self.tokenizer, self.template, messages, tools)

    def _begin(self, ids: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
        """Image rows: text after the image starts with a begin token, so generation always has one to start from
        (the image tokens themselves attend bidirectionally and cannot be extended causally)."""
        if self.images and (not ids or ids[0] != self.images.begin_id):
            return [self.images.begin_id, *ids], [IGNORE, *labels]
        return ids, labels

    def _fit(self, ids: list[int], labels: list[int]) -> list[tuple]:
        raw = len(ids)
        status = OK
        if raw > self.max_length:
            if self.overlong == "drop":
                return [([], [], DROPPED_OVERLONG, raw)]
            ids, labels, status = ids[: self.max_length], labels[: self.max_length], TRUNCATED
        if all(lab == IGNORE for lab in labels[1:]):
            return [([], [], DROPPED_NO_LABELS, raw)]
        return [(ids, labels, status, raw)]


def render_with_spans(tokenizer, template: str, messages: list[dict], tools: list | None = None):
    """(the conversation rendered by the template, the character spans of its assistant answers). An answer's span
    is what rendering its conversation prefix adds after the generation prompt, so it includes the template's
    end-of-turn marker; this works for any template that renders a prefix as the start of the whole."""
    render = lambda part, generation_prompt: render_chat(
        tokenizer, template, part, generation_prompt, tools=tools
    )
    full = render(messages, False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = render(messages[:i], True) if i else ""
        end = render(messages[: i + 1], False)
        if not (full.startswith(end) and end.startswith(start)):
            raise BadRow(
                "messages",
                "the chat template renders a conversation prefix differently from the whole conversation, so "
                "the answer tokens cannot be located; set data.template (e.g. chatml) or data.train_on: all",
            )
        spans.append((len(start), len(end)))
    return full, spans
