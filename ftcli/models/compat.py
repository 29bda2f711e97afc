"""Method-versus-architecture checks that need only the model's config.json, so `validate` can refuse a recipe
that cannot work before anything is downloaded or loaded (no torch here)."""

from __future__ import annotations

import json
from pathlib import Path

from ftcli.errors import RecipeError
from ftcli.models.builtin import BUILTINS, is_builtin
from ftcli.recipe.schema import Recipe

# Prefix tuning writes learned key/value vectors into each attention layer's cache; recurrent/state-space models
# keep no key/value cache, so peft has nothing to prefix.
NO_KV_CACHE = {"mamba", "mamba2", "falcon_mamba", "rwkv", "xlstm", "recurrent_gemma"}


def local_model_type(name: str, revision: str | None = None) -> str | None:
    """The config's model_type when it can be read without a download (builtin, local dir, hub cache)."""
    if is_builtin(name):
        return BUILTINS.get(name.removeprefix("builtin:"), (None,))[0]
    config = Path(name) / "config.json"
    if not config.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name, "config.json", revision=revision)
        except Exception:  # not a repo id at all: the loader reports that with the right key later
            return None
        if not isinstance(cached, str):
            return None
        config = Path(cached)
    try:
        return json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError):
        return None


def check_method_fits_model(recipe: Recipe) -> None:
    if recipe.method.type != "prefix":
        return
    kind = local_model_type(recipe.model.name, recipe.model.revision)
    if kind in NO_KV_CACHE:
        raise RecipeError(
            f"prefix tuning needs a key/value cache to prefix, and {kind} models have none; use method.type: lora "
            "or prompt",
            key="method.type",
        )
