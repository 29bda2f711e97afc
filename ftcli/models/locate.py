"""Where a model name points (a builtin, a local path, a hub id), and the refusal when it points nowhere, said
at once rather than after a minute of hub retries and loading."""

from __future__ import annotations

from pathlib import Path

from ftcli.errors import RecipeError, UserError
from ftcli.models.builtin import is_builtin
from ftcli.recipe.schema import Recipe


def missing_path(name: str) -> str | None:
    """Why `name` names a local path that is not there, or None when it exists, is a builtin, or may be a hub id
    (`org/name`, or a bare name like gpt2). A path-like name (/, ./, ../, ~, more than one slash) or an
    `org/name` whose `org/` is a local folder (`runs/my-run` beside ./runs) is a path, not a hub id."""
    if is_builtin(name) or Path(name).expanduser().exists():
        return None
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        return f"{name}: no such file or folder"
    folder = name.split("/")[0]
    if name.count("/") == 1 and Path(folder).is_dir():
        return (
            f"{name}: no such file or folder (and not taken for a hub model id: there is a local {folder}/)"
        )
    return None


def check_model_paths(recipe: Recipe) -> None:
    """model.name and model.adapter, as far as the disk can tell (no network: `validate` runs this)."""
    for key in ("name", "adapter"):
        value = getattr(recipe.model, key)
        why = value and missing_path(value)
        if why:
            raise RecipeError(why, key=f"model.{key}")


def check_hub_sources(recipe: Recipe) -> None:
    """Before a run: model.name and model.adapter that are hub ids exist in the hub cache or on a reachable
    hub."""
    for key, file in (("name", "config.json"), ("adapter", "adapter_config.json")):
        value = getattr(recipe.model, key)
        if value and not is_builtin(value) and not Path(value).expanduser().exists():
            try:
                check_source(value, file, recipe.model.revision if key == "name" else None)
            except UserError as exc:
                raise RecipeError(str(exc), key=f"model.{key}") from None


def check_source(name: str, file: str = "config.json", revision: str | None = None) -> None:
    """A name that is no local dir must be a hub model this machine has (`file` in the hub cache) or can reach."""
    why = missing_path(name)
    if why:
        raise UserError(why)
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        RepositoryNotFoundError,
    )

    try:
        if isinstance(try_to_load_from_cache(name, file, revision=revision), str):
            return
    except HFValidationError:  # not even shaped like a hub id
        raise UserError(f"{name}: no such file or folder") from None
    if constants.HF_HUB_OFFLINE:
        raise UserError(
            f"{name}: no such file or folder, nor a hub model in the local cache (the hub is offline here: "
            "HF_HUB_OFFLINE); download it where you are online first"
        )
    try:
        HfApi().model_info(name, revision=revision, timeout=10)
    except GatedRepoError:  # loading it says how to get access
        return
    except RepositoryNotFoundError:
        raise UserError(f"{name}: no such file or folder, nor a hub model") from None
    except HfHubHTTPError:  # the hub answered otherwise: loading it says what is wrong
        return
    except Exception as exc:  # noqa: BLE001 - no network, and it is in no local cache
        raise UserError(
            f"{name}: no such file or folder, and the hub cannot be reached to find it ({exc}); "
            "run where the hub is reachable, or give a local path"
        ) from None
