"""Loss and perplexity of a model on a recipe's data section (the same tokenization and labels as training, rows
one at a time whatever the training packed), so a fine-tune can be compared with its base on the same rows."""

from __future__ import annotations

from ftcli import report
from ftcli.data.collate import PaddedCollator
from ftcli.data.prepare import prepare_data
from ftcli.errors import UserError
from ftcli.models.hardware import input_device
from ftcli.recipe.registry import TASKS
from ftcli.recipe.schema import Recipe


def perplexity(model, tokenizer, recipe: Recipe, split: str | None, batch_size: int) -> dict:
    import torch

    from ftcli.infer.target import NO_DATA

    if recipe.data.sources[0].path == NO_DATA:
        raise UserError(
            "a bare model has no data to measure; pass a recipe and point it at the model: "
            "ftcli infer RECIPE --mode perplexity model.name=DIR"
        )
    if TASKS[recipe.task].pairs:
        raise UserError(f"perplexity needs text/chat data; task {recipe.task} has preference pairs")
    # Rows one by one, never packed: a model in inference mode (KV cache on) would let packed documents attend to
    # each other, and the loss must not depend on how the training data was laid out.
    unpacked = recipe.model_copy(update={"data": recipe.data.model_copy(update={"packing": False})})
    prepared = prepare_data(unpacked, tokenizer, log=report.phase)
    split = split or ("eval" if prepared.eval is not None else "train")
    rows = prepared.eval if split == "eval" else prepared.train
    if rows is None:
        raise UserError(
            "the recipe holds out no eval data (data.eval_fraction / eval_sources); use --split train"
        )
    device = input_device(model)
    collate = PaddedCollator(tokenizer.pad_token_id)
    total_loss, total_tokens = 0.0, 0
    for start in range(0, len(rows), batch_size):
        batch = collate([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
        batch = {k: v.to(device) for k, v in batch.items()}
        labels = batch.pop("labels")
        with torch.no_grad():
            logits = model(**batch).logits.float()
        logits = logits[:, -labels.shape[1] :]  # prompt tuning prepends virtual tokens
        shifted, targets = logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
        loss = torch.nn.functional.cross_entropy(shifted, targets, ignore_index=-100, reduction="sum")
        total_loss += loss.item()
        total_tokens += int((targets != -100).sum())
    mean = total_loss / max(total_tokens, 1)
    return {
        "split": split,
        "rows": len(rows),
        "tokens": total_tokens,
        "loss": mean,
        "perplexity": report.perplexity(mean),
    }
