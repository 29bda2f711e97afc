"""Method-versus-architecture checks that need only the model's config.json, so `validate` can refuse a recipe
that cannot work before anything is downloaded or loaded (no torch here)."""

from __future__ import annotations

import json
from pathlib import Path

from ftcli.errors import RecipeError
from ftcli.models.builtin import BUILTINS, is_builtin
from ftcli.recipe.registry import METHODS
from ftcli.recipe.schema import Recipe

# Prefix tuning writes learned key/value vectors into each attention layer's cache; recurrent/state-space models
# keep no key/value cache, so peft has nothing to prefix.
NO_KV_CACHE = {"mamba", "mamba2", "falcon_mamba", "rwkv", "xlstm", "recurrent_gemma"}


def local_config(name: str, revision: str | None = None) -> dict:
    """The model's config.json when it can be read without a download (builtin, local dir, hub cache), else {}."""
    if is_builtin(name):
        from ftcli.models.builtin import builtin_path

        config = builtin_path(name) / "config.json"
    else:
        config = Path(name) / "config.json"
    if not config.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name, "config.json", revision=revision)
        except Exception:  # not a repo id at all: the loader reports that with the right key later
            return {}
        if not isinstance(cached, str):
            return {}
        config = Path(cached)
    try:
        found = json.loads(config.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def local_model_type(name: str, revision: str | None = None) -> str | None:
    """The config's model_type when it can be read without a download (builtin, local dir, hub cache)."""
    if is_builtin(name):
        return BUILTINS.get(name.removeprefix("builtin:"), (None,))[0]
    return local_config(name, revision).get("model_type")


def check_method_fits_model(recipe: Recipe) -> None:
    method = METHODS[recipe.method.type]
    if method.kv_cache:
        kind = local_model_type(recipe.model.name, recipe.model.revision)
        if kind in NO_KV_CACHE:
            raise RecipeError(
                f"{method.name} tuning needs a key/value cache to write into, and {kind} models have "
                "none; use method.type: lora or prompt",
                key="method.type",
            )
    _check_adapter_kind(recipe, method)


def _check_adapter_kind(recipe: Recipe, method) -> None:
    """model.adapter continues an adapter of the recipe's own method kind (read from its adapter_config.json)."""
    adapter = recipe.model.adapter
    config = Path(adapter) / "adapter_config.json" if adapter else None
    if config is None or not config.is_file():
        return
    try:
        kind = json.loads(config.read_text()).get("peft_type")
    except (OSError, ValueError):
        return  # peft reports what is wrong with it when it loads
    if kind and method.peft_type and kind != method.peft_type:
        fits = [m for m, spec in METHODS.items() if spec.peft_type == kind]
        raise RecipeError(
            f"{adapter} is a {kind} adapter and method.type is {method.name}; set method.type: "
            f"{' or '.join(fits) or 'the adapter kind'}",
            key="model.adapter",
        )
