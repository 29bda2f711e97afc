"""Every bundled recipe validates offline, and the README's key reference matches the schema."""

import pytest

from ftcli.recipe import load_recipe
from ftcli.recipe.catalog import bundled_recipes
from ftcli.recipe.reference import markdown
from tests.helpers import ROOT

RECIPES = bundled_recipes()


def test_there_are_recipes_for_every_method_and_task():
    names = {name for name, _, _ in RECIPES}
    for task in ("sft", "pretrain"):
        for method in ("full", "lora", "qlora", "prefix", "prompt"):
            assert f"smoke/{task}-{method}" in names
    assert {"sft/llama-3.1-8b-qlora", "sft/qwen2.5-0.5b-full", "sft/mistral-7b-lora", "sft/opt-350m-prefix",
            "sft/opt-350m-prompt", "pretrain/qwen2.5-0.5b-continued"} <= names  # fmt: skip


@pytest.mark.parametrize("name, path, description", RECIPES, ids=[r[0] for r in RECIPES])
def test_bundled_recipe_validates_and_describes_itself(name, path, description):
    recipe = load_recipe(path)
    assert description, f"{name} has no description"
    if name.startswith("smoke/"):
        assert recipe.model.name.startswith("builtin:")


def test_readme_reference_is_current():
    assert markdown() in (ROOT / "README.md").read_text()
