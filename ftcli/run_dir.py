"""The run directory: ftcli's marker and lock, what `--overwrite` may replace, what `--resume` may change, the
frozen recipe, checkpoints to resume from.

A run dir holds ftcli's marker from its first moment, and its lock for the run's lifetime (a second run into it
is refused with the first one's PID). `--overwrite` replaces only a dir that holds the marker and nothing ftcli
does not write there, and never one that holds the recipe, its data, its model or the working directory.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import re
import shutil
import time
from pathlib import Path

import yaml

from ftcli import __version__, redact
from ftcli.errors import UserError
from ftcli.models.save import TOKENIZER_FILES
from ftcli.recipe.registry import METHODS
from ftcli.recipe.schema import Recipe

RESOLVED = "recipe.resolved.yaml"
MARKER = ".ftcli-run"
LOCK = ".ftcli-lock"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# a checkpoint being written: neither CHECKPOINT nor the Trainer's checkpoint-* rotation matches it
STAGING_GLOB = ".checkpoint-*.tmp"
FINAL_STAGING = ".saving"  # the final outputs, written here and moved into place once whole
# Everything ftcli (or a library it runs) writes into a run dir; anything else is the user's.
RUN_ENTRIES = (
    RESOLVED,
    MARKER,
    LOCK,
    FINAL_STAGING,
    STAGING_GLOB,
    "checkpoint-*",
    "summary.json",
    "summary.json.tmp",
    "metrics.jsonl",
    "loss.png",
    "eval.json",
    "eval.json.*",
    "accelerate_config.yaml",
    "merged",
    "runs",
    "adapter_config.json",
    "adapter_model.safetensors",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "training_args.bin",
    "README.md",
    "git_config.json",
    *TOKENIZER_FILES,  # the tokenizer and, for a vision-language model, its processor
)


def run_dir_of(recipe: Recipe) -> Path:
    return Path(recipe.output.dir or "runs/run")  # resolved to runs/<recipe file name> when the recipe loaded


class RunLock:
    """An exclusive lock on a run dir (flock on its lock file), held while the run lives; the kernel drops it when
    the process dies, however it dies."""

    def __init__(self, out: Path):
        import fcntl

        self.path = out / LOCK
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.read(self.fd, 200).decode(errors="replace").strip() or "another process"
            os.close(self.fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise UserError(
                    f"output dir {out} is in use by a running ftcli ({holder}); wait for it to finish "
                    "or stop it, or set output.dir"
                ) from None
            raise
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"PID {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def check_run_dir(recipe: Recipe, overwrite: bool, resume: bool) -> bool:
    """Every refusal of open_run_dir, with nothing created or changed, so a command can say it before loading
    anything heavy. Returns whether the dir already holds something."""
    out = run_dir_of(recipe)
    if overwrite and resume:
        raise UserError("--overwrite and --resume contradict each other; pick one")
    if out.exists() and not out.is_dir():
        raise UserError(f"output.dir {out} is a file; point output.dir at a directory")
    holder = lock_holder(out) if out.is_dir() else None
    if holder:
        raise UserError(
            f"output dir {out} is in use by a running ftcli ({holder}); wait for it to finish or stop it, "
            "or set output.dir"
        )
    busy = out.exists() and any(p.name != LOCK for p in out.iterdir())
    if resume:
        if not busy or newest_checkpoint(out) is None:
            raise UserError(
                f"--resume: no complete checkpoint in {out}; set training.save_steps and run without it"
            )
        check_resumable(recipe, out)
        return busy
    if busy and not overwrite:
        raise UserError(
            f"output dir {out} is not empty; pass --overwrite to replace it, --resume to continue it, "
            "or set output.dir"
        )
    if busy:
        check_replaceable(recipe, out)
    existing = next(p for p in (out, *out.resolve().parents) if p.exists())
    if not os.access(existing, os.W_OK):
        raise UserError(f"output.dir {out}: {existing} is not writable; point output.dir somewhere writable")
    return busy


def open_run_dir(recipe: Recipe, overwrite: bool, resume: bool) -> tuple[Path, RunLock]:
    """Create, replace (--overwrite) or reopen (--resume) the run dir and lock it. Every check comes before
    anything is created, cleared or rewritten."""
    busy = check_run_dir(recipe, overwrite, resume)
    out = run_dir_of(recipe)
    if resume:
        return out, RunLock(out)
    existing = next(p for p in (out, *out.resolve().parents) if p.exists())
    _check_free_space(recipe, out, existing)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"output.dir {out}: cannot create it ({exc.strerror})") from None
    lock = RunLock(out)
    if busy:
        for entry in out.iterdir():
            if entry.name != LOCK:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    (out / MARKER).write_text(
        json.dumps({"ftcli": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n"
    )
    return out, lock


def lock_holder(out: Path) -> str | None:
    """The PID line of a live run's lock, or None when nobody holds it."""
    import fcntl

    path = out / LOCK
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except OSError:
        return os.read(fd, 200).decode(errors="replace").strip() or "another process"
    finally:
        os.close(fd)


def check_replaceable(recipe: Recipe, out: Path) -> None:
    """--overwrite deletes only what ftcli made: a run dir (its marker) holding nothing else, and never a dir that
    holds the working directory, the recipe, or anything the recipe reads."""
    here = out.resolve()
    for label, path in [("the working directory", Path.cwd()), *local_inputs(recipe)]:
        target = Path(path).resolve()
        if target == here or here in target.parents:
            raise UserError(
                f"--overwrite: {out} holds {label} ({path}); it is never deleted. Set output.dir to a "
                "folder of its own"
            )
    if not (out / MARKER).exists():
        raise UserError(
            f"--overwrite: {out} is not a run dir ftcli made (no {MARKER} marker), so it is not deleted; "
            "empty it yourself or set output.dir"
        )
    foreign = sorted(
        p.name for p in out.iterdir() if not any(fnmatch.fnmatch(p.name, g) for g in RUN_ENTRIES)
    )
    if foreign:
        raise UserError(
            f"--overwrite: {out} also holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}, "
            "which ftcli did not write; move it out, or set output.dir"
        )


def local_inputs(recipe: Recipe) -> list[tuple[str, str]]:
    """(what, path) of every local file or folder the recipe reads."""
    found = [("the recipe", recipe._source)] if recipe._source else []
    found += [
        ("model.name", recipe.model.name),
        ("model.adapter", recipe.model.adapter),
        ("align.ref_model", recipe.align.ref_model),
        ("infer.input", recipe.infer.input),
        ("launch.config_file", recipe.launch.config_file),
        ("launch.deepspeed.config_file", recipe.launch.deepspeed.config_file),
        ("data.cache_dir", recipe.data.cache_dir),
    ]
    if recipe.multimodal is not None:
        found.append(("multimodal.vision_model", recipe.multimodal.vision_model))
    for group in ("sources", "eval_sources"):
        for i, src in enumerate(getattr(recipe.data, group)):
            found += [(f"data.{group}.{i}.path", src.path), (f"data.{group}.{i}.image_dir", src.image_dir)]
    return [(label, path) for label, path in found if path and Path(path).expanduser().exists()]


# What --resume may change: how long and how visibly to go on. The rest (model, method, data, seeds, batch shape,
# optimizer and schedule) is restored from the checkpoint or shapes it, so a change there would be ignored or break.
RESUMABLE_CHANGES = (
    "description",
    "infer",
    "output.dir",
    "output.merge",
    "launch.device",
    "data.cache_dir",
    "data.num_proc",
    "training.epochs",
    "training.max_steps",
    "training.logging_steps",
    "training.eval_steps",
    "training.save_steps",
    "training.save_total_limit",
    "training.report_to",
    "training.gradient_checkpointing",
    "launch.main_process_ip",
    "launch.main_process_port",
    "launch.machine_rank",
    "launch.config_file",
)


def check_resumable(recipe: Recipe, out: Path) -> None:
    """Refuse --resume with a recipe that differs from the frozen one in what cannot change mid-run, naming each
    changed key, before anything is rewritten."""
    from ftcli.recipe import load_recipe

    frozen = load_recipe(out / RESOLVED)
    changed = [
        (key, old, new)
        for key, old, new in _differences(frozen.model_dump(mode="json"), recipe.model_dump(mode="json"))
        if not any(key == k or key.startswith(k + ".") for k in RESUMABLE_CHANGES)
    ]
    if changed:
        shown = "; ".join(
            f"{k} ({redact.mask(json.dumps(a))} -> {redact.mask(json.dumps(b))})" for k, a, b in changed[:4]
        )
        more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
        raise UserError(
            f"--resume: {out} was trained with another recipe: {shown}{more}. These cannot change "
            "mid-run; undo them, or start a new run (another output.dir)"
        )


def _differences(old, new, prefix: str = "") -> list[tuple[str, object, object]]:
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in dict.fromkeys([*old, *new]):
            found += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return found
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def _check_free_space(recipe: Recipe, out: Path, existing: Path) -> None:
    """Enough room for one checkpoint, estimated from the base weights on disk (when they are local): full
    fine-tuning saves weights plus two optimizer moments, adapters a small fraction."""
    from ftcli.models.builtin import builtin_path, is_builtin

    source = builtin_path(recipe.model.name) if is_builtin(recipe.model.name) else Path(recipe.model.name)
    if not source.is_dir():
        return  # a hub id: its size is not known before download
    weights = sum(f.stat().st_size for f in source.glob("*") if f.suffix in (".safetensors", ".bin"))
    need = weights * (3 if METHODS[recipe.method.type].trains_base else 0.2)
    free = shutil.disk_usage(existing).free
    if need > free:
        raise UserError(
            f"output.dir {out}: a checkpoint needs about {need / 2**30:.1f} GiB and only "
            f"{free / 2**30:.1f} GiB is free; free space or point output.dir elsewhere"
        )


def staging_dir(out: Path, step: int) -> Path:
    """Where checkpoint-<step> is written before it is renamed into place (ftcli.tasks.guards)."""
    return out / STAGING_GLOB.replace("*", str(step))


def clear_staging(out: Path) -> None:
    """Drop what saves killed midway left in their staging dirs."""
    for staged in [*out.glob(STAGING_GLOB), out / FINAL_STAGING]:
        shutil.rmtree(staged, ignore_errors=True)


def newest_checkpoint(out: Path, report=None) -> Path | None:
    """The newest complete, readable checkpoint. Checkpoints are renamed into place only once complete, and
    trainer_state.json (written last) is required; one whose files are damaged (truncated, emptied) is passed
    over for the one before, and `report` is told why."""
    found = []
    for child in out.iterdir() if out.exists() else []:
        match = CHECKPOINT.match(child.name)
        if match and (child / "trainer_state.json").exists():
            found.append((int(match.group(1)), child))
    for _, checkpoint in sorted(found, reverse=True):
        damage = checkpoint_damage(checkpoint)
        if damage is None:
            return checkpoint
        if report is not None:
            report(f"{checkpoint.name} is damaged ({damage}); resuming from the one before")
    return None


def checkpoint_damage(checkpoint: Path) -> str | None:
    """Why a checkpoint cannot be resumed from, checked cheaply: every safetensors header and tensor extent,
    every torch zip archive's index, the trainer state's JSON."""
    import zipfile

    from safetensors import safe_open

    for file in sorted(checkpoint.iterdir()):
        try:
            if file.suffix == ".safetensors":
                with safe_open(str(file), "pt") as tensors:
                    tensors.keys()
            elif file.suffix in (".pt", ".pth", ".bin"):
                with zipfile.ZipFile(file) as archive:
                    archive.namelist()
            elif file.name == "trainer_state.json":
                json.loads(file.read_text())
        except Exception as exc:  # noqa: BLE001 - any failure to read means: do not resume from it
            return f"{file.name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    return None


def publish(stage: Path, out: Path, saved: dict) -> dict:
    """Move the whole final outputs from their staging dir into the run dir (each move a rename), replacing what
    an earlier attempt left; returns `saved` with its paths pointing at their places in the run dir."""
    for entry in sorted(stage.iterdir()):
        target = out / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)
    stage.rmdir()
    moved = lambda v: (
        str(out / Path(v).relative_to(stage)) if isinstance(v, str) and Path(v).is_relative_to(stage) else v
    )
    return {key: moved(value) for key, value in saved.items()}


def recipe_document(recipe: Recipe) -> dict:
    """The recipe as `validate` prints it and the run dir freezes it: every default filled in, secrets from the
    environment as their ${env:NAME} text, any other secret value masked."""
    body = recipe.model_dump(mode="json")
    for dotted, template in recipe._templates.items():
        node = body
        *parents, last = dotted.split(".")
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[int(last) if isinstance(node, list) else last] = template
    return redact.mask_tree(body)


def freeze_recipe(recipe: Recipe, out: Path) -> Path:
    """Write the fully resolved recipe next to the results."""
    path = out / RESOLVED
    path.write_text(yaml.safe_dump(recipe_document(recipe), sort_keys=False))
    return path


def private_recipe(recipe: Recipe) -> Path:
    """The recipe exactly as it runs, secrets included, for accelerate-launched workers: in a folder only this user
    can read, outside the run dir; the caller deletes it."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="ftcli-recipe-"))  # mode 0700
    path = folder / RESOLVED
    path.write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    return path
