"""`ftcli infer` on a pretrained vision-language model's run (task: vlm): an answer about each image, or its
caption when no prompt is given. Prompts are laid out as in training (data/vision.py): the model's chat template
with the images before the question, expanded into image tokens by its processor; batches are left-padded."""

from __future__ import annotations

import time
from collections.abc import Iterator

from ftcli.data.images import load_rgb
from ftcli.data.templates import render_chat
from ftcli.data.vision import processor_inputs
from ftcli.errors import UserError
from ftcli.infer.generate import generation_kwargs, result
from ftcli.infer.inputs import Item
from ftcli.infer.prompting import stop_ids
from ftcli.models.hardware import input_device
from ftcli.recipe.schema import InferSpec


def answer(model, processor, items: list[Item], spec: InferSpec, template: str) -> Iterator[dict]:
    import torch

    missing = next((item for item in items if "image" not in item.fields), None)
    if missing is not None:
        raise UserError(
            f"{missing.where}: a vision-language model answers about an image; give --image PATH (or an "
            "'image' field in --input rows)"
        )
    tokenizer = processor.tokenizer
    stops = stop_ids(tokenizer, template)
    kwargs = generation_kwargs(spec, tokenizer, stops)
    texts = [render_chat(tokenizer, template, _messages(item), True, field="prompt") for item in items]
    torch.manual_seed(spec.seed)
    device = input_device(model)
    tokenizer.padding_side = "left"
    for start in range(0, len(items), spec.batch_size):
        batch = items[start : start + spec.batch_size]
        inputs = processor_inputs(
            processor,
            texts[start : start + spec.batch_size],
            [load_rgb(item.fields["image"]) for item in batch],
            padding=True,
            return_tensors="pt",
        ).to(device)
        width = inputs["input_ids"].shape[1]
        began = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**inputs, **kwargs)
        seconds = time.perf_counter() - began
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
        for row, ids in enumerate(out[:, width:].tolist()):
            n = row // spec.num_return_sequences
            yield result(batch[n], ids, tokenizer, stops, lengths[n], seconds)


def _messages(item: Item) -> list[dict]:
    """The item as a user turn showing its image, then its question (none for a caption)."""
    messages = item.fields.get("messages")
    if messages is None:
        prompt = item.fields.get("prompt")
        messages = [{"role": "user", "content": prompt or ""}]
    placed = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in messages]
    first = next(m for m in placed if m["role"] == "user")
    first["content"] = [{"type": "image"}] + [c for c in first["content"] if c["text"]]
    return placed
