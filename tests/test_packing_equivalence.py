"""Packing changes the batch layout, never what is learned: per-token losses of packed rows equal those of the
same rows unpacked, because positions restart per document and no attention crosses documents."""

import torch

from ftcli.data.collate import PackedCollator, PaddedCollator
from ftcli.data.packing import pack_rows
from ftcli.data.prepare import prepare_data
from ftcli.models.load import load_base_model, load_tokenizer, training_config
from ftcli.recipe import load_recipe
from tests.helpers import RECIPES

IGNORE = -100


def token_losses(model, batch) -> torch.Tensor:
    """Loss of every labelled token, in document order."""
    labels = batch.pop("labels")
    with torch.no_grad():
        logits = model(**batch).logits
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), labels[:, 1:], reduction="none", ignore_index=IGNORE
    )
    return losses[labels[:, 1:] != IGNORE]


def batches(tmp_path):
    recipe = load_recipe(
        RECIPES / "smoke" / "sft-full.yaml",
        [f"data.cache_dir={tmp_path}", "data.packing=false", "data.eval_fraction=0"],
    )
    tokenizer = load_tokenizer(recipe.model)
    rows = prepare_data(recipe, tokenizer).train.select(range(12))
    ids, labels = [r["input_ids"] for r in rows], [r["labels"] for r in rows]
    packed = pack_rows(ids, labels, capacity=512, seed=0)
    # packing reorders documents (best fit); rebuild the unpacked batch in the packed order
    order = []
    for lengths, row_ids in zip(packed["seq_lengths"], packed["input_ids"]):
        start = 0
        for n in lengths:
            order.append(
                next(i for i, x in enumerate(ids) if x == row_ids[start : start + n] and i not in order)
            )
            start += n
    packed_rows = [
        {"input_ids": a, "labels": b, "seq_lengths": c}
        for a, b, c in zip(packed["input_ids"], packed["labels"], packed["seq_lengths"])
    ]
    unpacked_rows = [{"input_ids": ids[i], "labels": labels[i]} for i in order]
    return (
        recipe,
        PackedCollator(tokenizer.pad_token_id)(packed_rows),
        PaddedCollator(tokenizer.pad_token_id)(unpacked_rows),
    )


def test_packed_and_unpacked_rows_give_the_same_per_token_losses(tmp_path):
    recipe, packed, unpacked = batches(tmp_path)
    assert packed["input_ids"].shape[0] < unpacked["input_ids"].shape[0]  # really packed
    model = load_base_model(recipe).eval()
    assert model.config.use_cache  # as saved: the trap below is live until ftcli's training config
    training_config(model)
    a, b = token_losses(model, dict(packed)), token_losses(model, dict(unpacked))
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_with_the_kv_cache_on_packed_documents_would_leak_into_each_other(tmp_path):
    """Why training_config exists: transformers 5 ignores packed boundaries when use_cache is on."""
    recipe, packed, unpacked = batches(tmp_path)
    model = load_base_model(recipe).eval()
    model.config.use_cache = True
    a, b = token_losses(model, dict(packed)), token_losses(model, dict(unpacked))
    assert (a - b).abs().max() > 1e-2
