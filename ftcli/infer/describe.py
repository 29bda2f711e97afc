"""`ftcli infer` on a caption run: a caption, or an answer about each image. Prompts become tokens the way the
run saw them in training (captions: `multimodal.caption_prompt`; questions: the chat template), after the same
begin token. Items of equal prompt length share a batch, so no row is padded in front of its image."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator

from ftcli.data.images import begin_token_id, load_rgb
from ftcli.errors import UserError
from ftcli.infer.generate import generation_kwargs, result
from ftcli.infer.inputs import Item
from ftcli.infer.prompting import context_length, prompt_ids, stop_ids
from ftcli.models.hardware import input_device
from ftcli.models.multimodal import image_token_count
from ftcli.recipe.schema import InferSpec, Recipe


def describe(
    model, tokenizer, processor, items: list[Item], spec: InferSpec, template: str | None, recipe: Recipe
) -> Iterator[dict]:
    import torch

    missing = next((item for item in items if "image" not in item.fields), None)
    if missing is not None:
        raise UserError(
            f"{missing.where}: a caption model answers about an image; give --image PATH (or an "
            "'image' field in --input rows)"
        )
    asks = any("prompt" in item.fields or "messages" in item.fields for item in items)
    stops = stop_ids(tokenizer, template if asks else None)
    kwargs = generation_kwargs(spec, tokenizer, stops)
    begin = begin_token_id(tokenizer)
    context = context_length(model)
    context = context - image_token_count(model) if context else None  # the image's tokens come first
    groups: dict[int, list[tuple[Item, list[int]]]] = defaultdict(list)
    for item in items:
        if "prompt" in item.fields or "messages" in item.fields:
            ids = prompt_ids(tokenizer, template, item, context, spec.max_new_tokens)
        else:
            ids = tokenizer(recipe.multimodal.caption_prompt)["input_ids"]
        ids = ids if ids and ids[0] == begin else [begin, *ids]
        groups[len(ids)].append((item, ids))
    torch.manual_seed(spec.seed)
    device = input_device(model)
    done: dict[int, list[dict]] = {}
    for length, group in groups.items():
        for start in range(0, len(group), spec.batch_size):
            batch = group[start : start + spec.batch_size]
            pixels = processor(
                images=[load_rgb(item.fields["image"]) for item, _ in batch], return_tensors="pt"
            )
            began = time.perf_counter()
            out = model.generate(
                pixels["pixel_values"].to(device),
                torch.tensor([ids for _, ids in batch], device=device),
                **kwargs,
            )
            seconds = time.perf_counter() - began
            for row, ids in enumerate(out.tolist()):
                item = batch[row // spec.num_return_sequences][0]
                done.setdefault(item.index, []).append(result(item, ids, tokenizer, stops, length, seconds))
    for index in sorted(done):  # back in input order
        yield from done[index]
