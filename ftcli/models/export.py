"""`ftcli export` / `ftcli merge`: a run as one standalone model dir (an adapter merged into its base, or a full
fine-tune re-saved), in the layout of models/save.py, in a chosen dtype, optionally pushed to the hub."""

from __future__ import annotations

import fnmatch
import shutil
from pathlib import Path

from ftcli import report
from ftcli.errors import UserError
from ftcli.models.save import TOKENIZER_FILES
from ftcli.recipe.registry import METHODS, TASKS
from ftcli.recipe.schema import Recipe
from ftcli.run_dir import FINAL_STAGING, local_inputs, publish

DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}


def export_run(
    recipe: Recipe, run_dir: Path, out: Path, overwrite: bool, dtype: str | None = None, full_ok: bool = True
) -> Path:
    """`dtype`: f32 / f16 / bf16, or None for the dtype the run computed in. `full_ok=False` (`ftcli merge`)
    refuses full fine-tunes, which have nothing to merge."""
    from ftcli.models.save import merge_adapter, save_full

    method = METHODS[recipe.method.type]
    if TASKS[recipe.task].head == "git":
        raise UserError(
            f"{run_dir}: a caption run is rebuilt from its two base checkpoints by `ftcli infer`; there "
            "is no single transformers model to export"
        )
    if method.virtual_tokens:
        raise UserError(
            f"{run_dir}: {recipe.method.type} tuning adds virtual tokens at run time; there are no "
            "weights to merge it into. Use the run dir with peft as it is"
        )
    if method.trains_base and not full_ok:
        raise UserError(
            f"{run_dir}: a full fine-tune already holds full weights; nothing to merge "
            "(`ftcli export` re-saves it, e.g. in another dtype)"
        )
    _check_out(recipe, run_dir, out, overwrite)
    report.phase(f"writing {out} from {run_dir}")
    stage = out / FINAL_STAGING  # written whole, then moved into place: no half-written model dir
    if method.trains_base:  # the run dir holds the weights (resolve_target pointed model.name at it)
        save_full(recipe, run_dir, stage, DTYPES.get(dtype))
    else:
        base_recipe = recipe.model_copy(update={"model": recipe.model.model_copy(update={"adapter": None})})
        merge_adapter(base_recipe, run_dir, stage, DTYPES.get(dtype))
    for entry in out.iterdir():  # --overwrite: the earlier model's files go (only such files are there)
        if entry.name != FINAL_STAGING:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    publish(stage, out, {})
    return out


# What a model dir written by ftcli holds; --overwrite replaces a dir that holds nothing else.
MODEL_ENTRIES = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "chat_template.jinja",
    "chat_template.json",
    "README.md",
    FINAL_STAGING,
    *TOKENIZER_FILES,
)


def _check_out(recipe: Recipe, run_dir: Path, out: Path, overwrite: bool) -> None:
    """--out is a new or empty folder, or with --overwrite one holding only an earlier model; never the run, a
    folder holding it, or anything the recipe reads (its base model)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; name a folder")
    here = out.resolve()
    for label, path in [
        ("the run", str(run_dir)),
        ("the working directory", str(Path.cwd())),
        *local_inputs(recipe),
    ]:
        target = Path(path).resolve()
        if target == here or here in target.parents:
            raise UserError(
                f"--out {out} would hold {label} ({path}); write the model to a folder of its own"
            )
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"{out} exists and is not empty; pass --overwrite to replace it")
        foreign = sorted(
            p.name for p in out.iterdir() if not any(fnmatch.fnmatch(p.name, g) for g in MODEL_ENTRIES)
        )
        if foreign:
            raise UserError(
                f"--overwrite: {out} also holds {', '.join(foreign[:3])}, which is not part of a model "
                "ftcli writes; move it out or choose another --out"
            )
    out.mkdir(parents=True, exist_ok=True)


def require_hub_token(repo: str) -> None:
    """Checked before the merge, so a missing login fails in a second, not after minutes of merging."""
    from huggingface_hub import get_token

    if not get_token():
        raise UserError(f"--push-to-hub {repo}: no Hugging Face token; run `hf auth login` or set HF_TOKEN")


def push_to_hub(folder: Path, repo: str, private: bool = True) -> str:
    """Upload a merged (or any) model dir as a private repo (created if missing)."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo, private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo, folder_path=str(folder), commit_message="ftcli merge")
    return str(getattr(info, "commit_url", repo))
