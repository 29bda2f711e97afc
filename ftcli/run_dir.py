"""The run directory: refuse to clobber, find checkpoints to resume, freeze the resolved recipe."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import yaml

from ftcli.errors import UserError
from ftcli.recipe.schema import Recipe

RESOLVED = "recipe.resolved.yaml"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# a checkpoint being written: neither CHECKPOINT nor the Trainer's checkpoint-* rotation matches it
STAGING_GLOB = ".checkpoint-*.tmp"


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
    if busy and not overwrite:
        raise UserError(
            f"output dir {out} is not empty; pass --overwrite to replace it, --resume to continue it, "
            "or set output.dir"
        )
    existing = next(p for p in (out, *out.resolve().parents) if p.exists())  # checked before anything is made
    if not os.access(existing, os.W_OK):
        raise UserError(f"output.dir {out}: {existing} is not writable; point output.dir somewhere writable")
    _check_free_space(recipe, out, existing)
    if busy:
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"output.dir {out}: cannot create it ({exc.strerror})") from None
    return out


def _check_free_space(recipe: Recipe, out: Path, existing: Path) -> None:
    """Enough room for one checkpoint, estimated from the base weights on disk (when they are local): full
    fine-tuning saves weights plus two optimizer moments, adapters a small fraction."""
    from ftcli.models.builtin import builtin_path, is_builtin

    source = builtin_path(recipe.model.name) if is_builtin(recipe.model.name) else Path(recipe.model.name)
    if not source.is_dir():
        return  # a hub id: its size is not known before download
    weights = sum(f.stat().st_size for f in source.glob("*") if f.suffix in (".safetensors", ".bin"))
    need = weights * (3 if recipe.method.type == "full" else 0.2)
    free = shutil.disk_usage(existing).free
    if need > free:
        raise UserError(f"output.dir {out}: a checkpoint needs about {need / 2**30:.1f} GiB and only "
                        f"{free / 2**30:.1f} GiB is free; free space or point output.dir elsewhere")


def staging_dir(out: Path, step: int) -> Path:
    """Where checkpoint-<step> is written before it is renamed into place (ftcli.tasks.guards)."""
    return out / STAGING_GLOB.replace("*", str(step))


def clear_staging(out: Path) -> None:
    """Drop what saves killed midway left in their staging dirs."""
    for staged in out.glob(STAGING_GLOB):
        shutil.rmtree(staged, ignore_errors=True)


def newest_checkpoint(out: Path) -> Path | None:
    """The newest checkpoint whose save finished. Checkpoints are renamed into place only once complete (a save
    killed midway leaves a staging dir, never seen here); trainer_state.json, written last, is still required, for
    checkpoint dirs written in place by older versions."""
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
