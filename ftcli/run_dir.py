"""The run directory: refuse to clobber, find checkpoints to resume, freeze the resolved recipe."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import yaml

from ftcli.errors import UserError
from ftcli.recipe.schema import Recipe

RESOLVED = "recipe.resolved.yaml"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def run_dir_of(recipe: Recipe) -> Path:
    if recipe.output.dir:
        return Path(recipe.output.dir)
    stem = Path(recipe._source).stem if recipe._source else "run"
    return Path("runs") / stem


def open_run_dir(recipe: Recipe, overwrite: bool, resume: bool) -> Path:
    """Create (or reuse, for --resume) the run dir. A non-empty dir is never reused or cleared silently."""
    out = run_dir_of(recipe)
    if overwrite and resume:
        raise UserError("--overwrite and --resume contradict each other; pick one")
    if out.exists() and not out.is_dir():
        raise UserError(f"output.dir {out} is a file; point output.dir at a directory")
    busy = out.exists() and any(out.iterdir())
    if resume:
        if not busy or newest_checkpoint(out) is None:
            raise UserError(f"--resume: no complete checkpoint in {out}; set training.save_steps and run without it")
        return out
    if busy:
        if not overwrite:
            raise UserError(
                f"output dir {out} is not empty; pass --overwrite to replace it, --resume to continue it, "
                "or set output.dir"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def newest_checkpoint(out: Path) -> Path | None:
    """The newest checkpoint whose save finished (trainer_state.json is written last)."""
    found = []
    for child in out.iterdir() if out.exists() else []:
        match = CHECKPOINT.match(child.name)
        if match and (child / "trainer_state.json").exists():
            found.append((int(match.group(1)), child))
    return max(found)[1] if found else None


def freeze_recipe(recipe: Recipe, out: Path) -> Path:
    """Write the fully resolved recipe (every default filled in) next to the results."""
    path = out / RESOLVED
    body = recipe.model_dump(mode="json")
    for dotted in recipe._secret_paths:  # never write secrets that came from the environment
        node = body
        *parents, last = dotted.split(".")
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[int(last) if isinstance(node, list) else last] = "***"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path
