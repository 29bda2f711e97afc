"""Image rows for a pretrained vision-language model (task: vlm): conversations with images, tokenized the way the
model's own processor and chat template lay them out, with labels on the assistant answers only.

Each row becomes messages whose content lists {"type": "image"} and {"type": "text"} items, as transformers'
processors take them: images go where LLaVA-style text marks them (<image>), else before the first user turn's
text. The template renders the conversation (the labels are the character spans its assistant answers add, as for
text chat); the processor then expands each image's placeholder into that image's tokens, whose number depends on
the image for some models (Qwen2-VL), so the labels are carried over token by token. Rows keep image paths, not
pixels: the collator runs the image processor per batch.

Used as a batched `datasets.map` function, so it must stay picklable (num_proc > 1).
"""

from __future__ import annotations

from dataclasses import dataclass

from ftcli.data.formats import BadRow, row_reader
from ftcli.data.images import IMAGE_PLACEHOLDER, ImageRows, load_rgb
from ftcli.data.pairs import PAIR_COLUMNS, PairTokenizer
from ftcli.data.tokenize import (
    BAD,
    DROPPED_NO_LABELS,
    DROPPED_OVERLONG,
    IGNORE,
    OK,
    TRUNCATED,
    cap_text,
    char_budget,
    render_with_spans,
)


def image_token_id(processor) -> int:
    """The token a processor expands into an image's features (<image>, <|image_pad|>, ...)."""
    token_id = getattr(processor, "image_token_id", None)
    if token_id is None:
        token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    return token_id


@dataclass
class VisionRows:
    processor: object
    fmt: str
    columns: dict
    template: str
    train_on: str  # completion | all
    max_length: int
    overlong: str  # truncate | drop
    images: ImageRows  # where image paths may point; its GIT settings are not used here

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        names = list(batch)
        out: dict[str, list] = {
            k: [] for k in ("input_ids", "labels", "images", "status", "raw_length", "__row", "error")
        }
        read_row = row_reader(self.fmt)
        for values in zip(*batch.values()):
            row = dict(zip(names, values))
            try:
                c = read_row(row, self.columns)
                paths = image_paths(c, self.images)
                ids, labels, status, raw = self.encode(self._messages(c, len(paths)), paths)
                error = None
            except BadRow as bad:
                ids, labels, paths, status, raw = [], [], [], BAD, 0
                error = f"field '{bad.field}': {bad.message}"
            if status not in (OK, TRUNCATED):
                ids, labels, paths = [], [], []
            out["input_ids"].append(ids)
            out["labels"].append(labels)
            out["images"].append(paths)
            out["status"].append(status)
            out["raw_length"].append(raw)
            out["__row"].append(row.get("__row", 0))
            out["error"].append(error)
        return out

    def _messages(self, c: dict, images: int) -> list[dict]:
        """The row as a conversation of content-item lists, its images placed."""
        budget = char_budget(self.processor.tokenizer, self.max_length)
        if "messages" in c:
            messages = [{"role": m["role"], "content": cap_text(m["content"], budget)} for m in c["messages"]]
        else:  # a caption: the image (and the prompt, if any) asks, the caption answers
            messages = [
                {"role": "user", "content": c["prompt"]},
                {"role": "assistant", "content": cap_text(c["completion"], budget)},
            ]
        return place_images(messages, images)

    def encode(self, messages: list[dict], paths: list[str]):
        """(input_ids with each image's tokens, labels, status, length before any cut)."""
        tok = self.processor.tokenizer
        text, spans = render_with_spans(tok, self.template, messages)
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        image = image_token_id(self.processor)
        ids = enc["input_ids"]
        if ids.count(image) != len(paths):
            raise BadRow(
                "messages",
                f"the chat template placed {ids.count(image)} images for {len(paths)}; use the model's own "
                "template (leave data.template unset)",
            )
        labels = [
            t if t != image and (self.train_on == "all" or any(s <= o[0] < e for s, e in spans)) else IGNORE
            for t, o in zip(ids, enc["offset_mapping"])
        ]
        stop = []
        if spans and spans[-1][1] == len(text):  # the model must learn to stop, as for text chat
            last = [t for t, o in zip(ids, enc["offset_mapping"]) if o[0] >= spans[-1][0]]
            if not any(t in set(tok.all_special_ids) for t in last):
                stop = [tok.eos_token_id]
        expanded = processor_inputs(self.processor, [text], [load_rgb(p) for p in paths])["input_ids"][0]
        ids, labels = _carry_labels(list(expanded), ids, labels, image)
        ids, labels = ids + stop, labels + stop
        raw = len(ids)
        status = OK
        if raw > self.max_length:
            last_image = max(i for i, t in enumerate(ids) if t == image)
            if self.overlong == "drop" or last_image >= self.max_length:  # an image is never cut
                return [], [], DROPPED_OVERLONG, raw
            ids, labels, status = ids[: self.max_length], labels[: self.max_length], TRUNCATED
        if all(label == IGNORE for label in labels):
            return [], [], DROPPED_NO_LABELS, raw
        return ids, labels, status, raw


@dataclass
class VisionPairs(PairTokenizer):
    """Preference pairs about images (task vlm_dpo): the prompt shows the row's images, laid out as VisionRows
    lays out a conversation (the model's template, each image's tokens by its processor); the answers are text,
    tokenized as for text pairs. An image is never cut: a prompt over align.max_prompt_length drops the pair."""

    processor: object = None
    images: ImageRows | None = None  # where image paths may point
    OUTPUT = (*PAIR_COLUMNS, "images")

    def _encode(self, pair: dict):
        paths = image_paths(pair, self.images)
        budget = char_budget(self.tokenizer, self.max_length)
        prompt = pair["prompt"]
        prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        answers = [pair[side] for side in ("chosen", "rejected")]
        answers = [[{"role": "assistant", "content": a}] if isinstance(a, str) else a for a in answers]
        answers = [[{**m, "content": cap_text(m["content"], budget)} for m in a] for a in answers]
        prompt, *answers = (items(side) for side in (place_images(prompt, len(paths)), *answers))
        prompt_text, texts = self.render(prompt, answers)
        placed = self.tokenizer(prompt_text, add_special_tokens=False)["input_ids"].count(
            image_token_id(self.processor)
        )
        if placed != len(paths):
            raise BadRow(
                "prompt",
                f"the chat template placed {placed} images for {len(paths)}; use the model's own template "
                "(leave data.template unset)",
            )
        prompt_ids = processor_inputs(self.processor, [prompt_text], [load_rgb(p) for p in paths])[
            "input_ids"
        ][0]
        answers = self.answer_ids(texts)
        if any(image_token_id(self.processor) in ids for ids in answers):
            raise BadRow("chosen", "an answer holds the image token; images belong in the prompt")
        *ids, status, raw = self._fit(list(prompt_ids), *answers)
        return {**dict(zip(PAIR_COLUMNS, ids)), "images": paths}, status, raw

    def _fit(self, prompt, chosen, rejected):
        if len(prompt) > self.max_prompt_length:  # cutting it would cut an image's tokens
            return [], [], [], DROPPED_OVERLONG, len(prompt) + max(len(chosen), len(rejected))
        return super()._fit(prompt, chosen, rejected)


def processor_inputs(processor, texts: list[str], images: list, **kwargs) -> dict:
    """What the processor makes of rendered conversations and their images (each image's placeholder expanded into
    its tokens). A BOS the template wrote itself is not added again, as transformers' own apply_chat_template
    does (a Gemma 3-style template starts with it; LLaVA's and Qwen's do not)."""
    bos = processor.tokenizer.bos_token
    if bos is not None and all(text.startswith(bos) for text in texts):
        kwargs["add_special_tokens"] = False
    return processor(text=texts, images=images, **kwargs)


def image_paths(c: dict, images: ImageRows) -> list[str]:
    """The canonical row's image paths (one or several), resolved and checked."""
    column = c.pop("image_column")
    values = c["image"] if isinstance(c["image"], list) else [c["image"]]
    if not values:
        raise BadRow(column, "no image")
    return [images.resolve(value, column) for value in values]


def place_images(messages: list[dict], images: int) -> list[dict]:
    """Messages whose content is a list of items, {"type": "image"} where LLaVA-style text marks the images
    (<image>), else before the first user turn's text."""
    marked = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in messages)
    if marked not in (0, images):
        raise BadRow("image", f"{marked} {IMAGE_PLACEHOLDER} marks in the text for {images} images")
    placed = []
    for m in messages:
        content = []
        for i, part in enumerate(m["content"].split(IMAGE_PLACEHOLDER)):
            if i:
                content.append({"type": "image"})
            if part.strip("\n"):
                content.append({"type": "text", "text": part.strip("\n") if marked else part})
        placed.append({"role": m["role"], "content": content})
    if not marked:
        first = next((m for m in placed if m["role"] == "user"), None)
        if first is None:
            raise BadRow("messages", "no user turn to show the image in")
        first["content"] = [{"type": "image"}] * images + first["content"]
    return placed


def items(messages: list[dict]) -> list[dict]:
    """Messages with text content as content-item lists, as vision templates take every turn."""
    return [
        m if isinstance(m["content"], list) else {**m, "content": [{"type": "text", "text": m["content"]}]}
        for m in messages
    ]


def _carry_labels(expanded: list[int], ids: list[int], labels: list[int], image: int):
    """`labels` (for `ids`, one placeholder token per image) onto the processor's `expanded` ids, where each
    placeholder became that image's tokens, perhaps with markers around them (Gemma 3's <start_of_image>,
    Idefics3's <fake_token_around_image>) and a BOS in front. The text between placeholders is found again in
    order; everything else, the images' tokens above all, carries no label."""
    cuts = [i for i, t in enumerate(ids) if t == image]
    out = [IGNORE] * len(expanded)
    at = 0
    for first, end in zip([0, *(c + 1 for c in cuts)], [*cuts, len(ids)]):
        piece = ids[first:end]
        found = _find(expanded, piece, at)
        if found is None:
            raise BadRow(
                "messages", "the processor tokenizes this conversation differently from its tokenizer"
            )
        out[found : found + len(piece)] = labels[first:end]
        at = found + len(piece)
    return list(expanded), out


def _find(sequence: list[int], piece: list[int], start: int) -> int | None:
    """Where `piece` next occurs in `sequence` from `start` (an empty piece: at `start`)."""
    n = len(piece)
    for i in range(start, len(sequence) - n + 1):
        if sequence[i : i + n] == piece:
            return i
    return None
