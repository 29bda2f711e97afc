"""Batched generation with left padding; results come back in input order, one dict per completion."""

from __future__ import annotations

import time
from collections.abc import Iterator

from ftcli.infer.inputs import Item
from ftcli.infer.prompting import context_length, prompt_ids, stop_ids
from ftcli.models.hardware import input_device
from ftcli.recipe.schema import InferSpec


def generate(
    model, tokenizer, items: list[Item], spec: InferSpec, template: str | None, stream=None
) -> Iterator[dict]:
    import torch

    stops = stop_ids(tokenizer, template)
    kwargs = generation_kwargs(spec, tokenizer, stops)
    torch.manual_seed(spec.seed)
    device = input_device(model)
    context = context_length(model)
    encoded = [prompt_ids(tokenizer, template, item, context, spec.max_new_tokens) for item in items]
    for start in range(0, len(items), spec.batch_size):
        batch = encoded[start : start + spec.batch_size]
        width = max(len(ids) for ids in batch)
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in batch], device=device)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=device)
        began = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=mask, streamer=stream, **kwargs)
        seconds = time.perf_counter() - began
        for row, ids in enumerate(out[:, width:].tolist()):
            n = row // spec.num_return_sequences
            yield result(items[start + n], ids, tokenizer, stops, len(batch[n]), seconds)


def generation_kwargs(spec: InferSpec, tokenizer, stops: list[int]) -> dict:
    sampling = spec.temperature > 0
    return dict(
        max_new_tokens=spec.max_new_tokens,
        do_sample=sampling,
        num_return_sequences=spec.num_return_sequences,
        repetition_penalty=spec.repetition_penalty,
        eos_token_id=stops,
        pad_token_id=tokenizer.pad_token_id,
        **(
            {"temperature": spec.temperature, "top_p": spec.top_p, "top_k": spec.top_k or None}
            if sampling
            else {}
        ),
    )


def result(
    item: Item, ids: list[int], tokenizer, stops: list[int], prompt_tokens: int, seconds: float
) -> dict:
    """One completion: cut at the first stop token, padding dropped, decoded."""
    end = next((i for i, t in enumerate(ids) if t in stops), None)
    kept = [t for t in (ids if end is None else ids[:end]) if t != tokenizer.pad_token_id]
    return {
        "index": item.index,
        **({"image": item.fields["image"]} if "image" in item.fields else {}),
        "input": item.fields.get("prompt", item.fields.get("messages")),
        "output": tokenizer.decode(kept, skip_special_tokens=True),
        "prompt_tokens": prompt_tokens,
        "completion_tokens": len(kept) + (end is not None),
        "finish_reason": "stop" if end is not None else "length",
        "batch_seconds": round(seconds, 4),
    }
