"""Every bundled recipe validates offline, and the README's key reference matches the schema."""

import re

import pytest

from ftcli.recipe import load_recipe
from ftcli.recipe.catalog import bundled_recipes
from ftcli.recipe.reference import document
from tests.helpers import ROOT

RECIPES = bundled_recipes()


def test_there_are_recipes_for_every_method_and_task():
    names = {name for name, _, _ in RECIPES}
    for task in ("sft", "pretrain"):
        for method in ("full", "lora", "qlora", "prefix", "prompt"):
            assert f"smoke/{task}-{method}" in names
    assert {
        "sft/llama-3.1-8b-qlora",
        "sft/qwen2.5-0.5b-full",
        "sft/mistral-7b-lora",
        "sft/opt-350m-prefix",
        "sft/opt-350m-prompt",
        "pretrain/qwen2.5-0.5b-continued",
    } <= names
    study = {f"multimodal/coco-opt-350m-{part}" for part in ("proj", "lora", "lm", "vit", "head")}
    assert (
        study
        | {
            "multimodal/coco-opt-6.7b-lora",
            "multimodal/coco-llama-2-7b-lora",
            "multimodal/coco-mpt-7b-lora",
            "multimodal/coco-m3it-llama-2-7b-lora",
            "smoke/caption-lora",
            "smoke/caption-qlora",
        }
        <= names
    )


@pytest.fixture(scope="module")
def local_datasets(tmp_path_factory):
    """Recipes that read downloaded datasets name them as ${env:COCO_DIR}/... : validate against a stand-in tree
    holding every file and folder they name."""
    root = tmp_path_factory.mktemp("datasets")
    for recipe in (ROOT / "recipes").rglob("*.yaml"):
        for var, rest in re.findall(
            r"\$\{env:(COCO_DIR|M3IT_DIR|LLAVA_DIR)\}(/[^\s\"']+)", recipe.read_text()
        ):
            target = root / var / rest.lstrip("/")
            if target.suffix in (".json", ".jsonl"):
                target.parent.mkdir(parents=True, exist_ok=True)
                target.touch()
            else:
                target.mkdir(parents=True, exist_ok=True)
    return {var: str(root / var) for var in ("COCO_DIR", "M3IT_DIR", "LLAVA_DIR")}


@pytest.mark.parametrize("name, path, description", RECIPES, ids=[r[0] for r in RECIPES])
def test_bundled_recipe_validates_and_describes_itself(name, path, description, local_datasets, monkeypatch):
    for var, value in local_datasets.items():
        monkeypatch.setenv(var, value)
    recipe = load_recipe(path)
    assert description, f"{name} has no description"
    if name.startswith("smoke/"):
        assert recipe.model.name.startswith("builtin:")


def test_the_key_reference_is_current():
    assert (ROOT / "docs" / "recipe-reference.md").read_text() == document()
