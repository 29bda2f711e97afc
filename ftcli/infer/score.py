"""Reward-model scores: one per prompt/response, or both sides of a preference pair and which wins. Sequences
are built exactly as in reward training (ftcli's pair tokenizer), so scores match the trained model's."""

from __future__ import annotations

from collections.abc import Iterator

from ftcli.data.formats import BadRow
from ftcli.data.pairs import PairTokenizer
from ftcli.errors import DataError
from ftcli.infer.inputs import Item
from ftcli.infer.prompting import context_length
from ftcli.models.hardware import input_device


def score(model, tokenizer, items: list[Item], template: str | None) -> Iterator[dict]:
    import torch

    device, context = input_device(model), context_length(model)
    pairs = PairTokenizer(tokenizer, {}, template, 10**9, 10**9, "truncate")
    for item in items:
        f = item.fields
        answers = [f["chosen"], f["rejected"]] if "chosen" in f and "rejected" in f else [f.get("response")]
        if answers[0] is None:
            raise DataError(
                f"{item.where}: scoring needs 'response' (or 'chosen' and 'rejected') next to 'prompt'"
            )
        try:
            prompt, *completions = pairs.encode(f.get("messages") or f["prompt"], answers)
        except BadRow as bad:
            raise DataError(f"{item.where}: {bad.message}") from None
        longest = len(prompt) + max(map(len, completions))
        if context and longest > context:
            raise DataError(
                f"{item.where}: {longest:,} tokens, over the model's context of {context:,}; shorten it"
            )
        with torch.no_grad():
            values = [
                model(input_ids=torch.tensor([prompt + c], device=device)).logits[0, 0].item()
                for c in completions
            ]
        if len(values) == 2:
            yield {
                "index": item.index,
                "chosen_score": values[0],
                "rejected_score": values[1],
                "winner": "chosen" if values[0] > values[1] else "rejected",
            }
        else:
            yield {"index": item.index, "score": values[0]}
