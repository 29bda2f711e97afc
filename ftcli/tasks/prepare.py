"""`ftcli prepare`: run a recipe's data pipeline into the cache and report what it did."""

from __future__ import annotations

from ftcli import report
from ftcli.data.prepare import prepare_data
from ftcli.models.load import load_processor, load_tokenizer
from ftcli.recipe.registry import TASKS
from ftcli.recipe.schema import Recipe


def run(recipe: Recipe) -> dict:
    processor = load_processor(recipe.model) if TASKS[recipe.task].head == "vlm" else None  # as training does
    tokenizer = processor.tokenizer if processor is not None else load_tokenizer(recipe.model)
    prepared = prepare_data(recipe, tokenizer, log=report.phase, processor=processor)
    report.print_prepare_stats(prepared.stats, prepared.cache_dir, prepared.cache_hit)
    return {**prepared.stats, "cache_dir": prepared.cache_dir, "cache_hit": prepared.cache_hit}
