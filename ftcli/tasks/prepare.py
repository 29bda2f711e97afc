"""`ftcli prepare`: run a recipe's data pipeline into the cache and report what it did."""

from __future__ import annotations

from ftcli import report
from ftcli.data.prepare import prepare_data
from ftcli.models.load import load_tokenizer
from ftcli.recipe.schema import Recipe


def run(recipe: Recipe) -> dict:
    tokenizer = load_tokenizer(recipe.model)
    prepared = prepare_data(recipe, tokenizer, log=report.phase)
    report.print_prepare_stats(prepared.stats, prepared.cache_dir, prepared.cache_hit)
    return {**prepared.stats, "cache_dir": prepared.cache_dir, "cache_hit": prepared.cache_hit}
