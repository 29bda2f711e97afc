"""What `ftcli infer` / `ftcli merge` run on: a recipe, or a run dir whose frozen recipe says how to rebuild the
trained model (base + adapter, full weights, or the merged copy)."""

from __future__ import annotations

from pathlib import Path

from ftcli.errors import UserError
from ftcli.models.compat import local_config
from ftcli.models.locate import check_source
from ftcli.recipe import load_recipe
from ftcli.recipe.catalog import find_recipe
from ftcli.recipe.load import Origins
from ftcli.recipe.registry import TASKS
from ftcli.recipe.schema import FullMethod, Recipe
from ftcli.run_dir import RESOLVED, lock_holder, newest_checkpoint

NO_DATA = "(no data: a bare model)"


def resolve_target(target: str, overrides: list[str]) -> Recipe:
    path = Path(target)
    if path.is_dir():
        run = (
            path if (path / RESOLVED).exists() else path.parent if (path.parent / RESOLVED).exists() else None
        )
        if run is None:
            if (path / "config.json").exists():  # a merged or downloaded model dir
                return _model_only(str(path.resolve()), overrides)
            raise UserError(f"{target}: neither a run dir (no {RESOLVED}) nor a model dir (no config.json)")
        if path == run:
            _check_finished(run, target)
        recipe = load_recipe(run / RESOLVED, overrides)
        return _trained_model(recipe, path, target)
    found = find_recipe(target)
    if path.suffix in (".yaml", ".yml") or Path(found).is_file():
        return load_recipe(found, overrides)
    if target.startswith("builtin:"):
        return _model_only(target, overrides)
    if path.exists():
        raise UserError(
            f"{target}: expected a recipe (.yaml), a run dir, a model dir, a hub id or builtin:NAME"
        )
    check_source(target)
    return _model_only(target, overrides)


def _trained_model(recipe: Recipe, path: Path, target: str) -> Recipe:
    """The run's recipe pointed at what `path` (the run, its merged/ or a checkpoint-N) holds: a caption run's
    trained tensors, an adapter, or whole weights (merged or full)."""
    if TASKS[recipe.task].head == "git":  # its trained tensors are rebuilt onto the two base checkpoints
        if not (path / "model.safetensors").exists():
            raise UserError(
                f"{target}: no model.safetensors; the run may not have finished (see summary.json)"
            )
        recipe.model.adapter = str(path.resolve())
        return recipe
    if (path / "adapter_config.json").exists():
        recipe.model.adapter = str(path.resolve())
        return recipe
    if (path / "config.json").exists():  # the whole model: the dir alone, trained with nothing to add
        model = recipe.model.model_copy(update={"name": str(path.resolve()), "adapter": None})
        return recipe.model_copy(
            update={
                "model": model,
                "method": FullMethod(),
                "output": recipe.output.model_copy(update={"merge": False}),
            }
        )
    raise UserError(
        f"{target}: neither adapter_config.json nor config.json; the run may not have finished (see "
        "summary.json)"
    )


def _check_finished(run: Path, target: str) -> None:
    """A run's final outputs are whole only once it completed; an unfinished one is refused, saying what to do."""
    import json

    try:
        summary = json.loads((run / "summary.json").read_text())
    except (OSError, ValueError):
        return  # no record to go by (an older run, or one copied without it): its files are checked as they load
    status = summary.get("status")
    if status in (None, "completed"):
        return
    why = f" ({summary['error']})" if summary.get("error") else ""
    newest = newest_checkpoint(run)
    use = f", or use its newest checkpoint: {newest}" if newest else ""
    if status == "running":
        holder = lock_holder(run)
        what = f"is still running ({holder})" if holder else "was killed while it ran"
    else:
        what = f"did not complete: it {status}{why}"
    raise UserError(
        f"{target}: the run {what}; its final outputs are not there. Finish it with --resume{use}"
    )


def _model_only(name: str, overrides: list[str]) -> Recipe:
    """A bare model has no recipe: its own chat template, no data section to measure perplexity on."""
    import tempfile

    import yaml

    task, fmt = "sft", "chat"
    found = local_config(name)
    if any("SequenceClassification" in a for a in found.get("architectures", [])):
        task, fmt = "reward", "preference"
    elif (
        "vision_config" in found
    ):  # a vision-language model (a merged or exported vlm run, LLaVA, Qwen2-VL, ...)
        task, fmt = "vlm", "image_chat"
    body = {
        "description": f"inference on {name}",
        "task": task,
        "model": {"name": name},
        "data": {"format": fmt, "sources": [NO_DATA]},
    }
    with tempfile.TemporaryDirectory() as tmp:
        recipe_file = Path(tmp) / "model.yaml"
        recipe_file.write_text(yaml.safe_dump(body))
        recipe = load_recipe(recipe_file, overrides)
    recipe._origins = Origins(
        {(): f"{name} (a model with no recipe)"}
    )  # errors name it, not a temporary file
    return recipe


def starting_model(target: str, overrides: list[str]) -> Recipe:
    """What a run dir started from (its frozen recipe's model and adapter), for side-by-side comparisons."""
    path = Path(target)
    run = path if (path / RESOLVED).exists() else path.parent if (path.parent / RESOLVED).exists() else None
    if run is None:
        raise UserError(f"--compare-base: {target} is not a run dir; its recipe is what names the base")
    return load_recipe(run / RESOLVED, overrides)
