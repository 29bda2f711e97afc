"""Where a command runs: in this process, or in accelerate-launched workers (ftcli.dispatch) when the recipe asks
for more than one. The task's spec (recipe/registry.py) names the function that trains it."""

from __future__ import annotations

from ftcli.errors import RecipeError, UserError
from ftcli.models.compat import check_method_fits_model
from ftcli.models.locate import check_hub_sources, check_model_paths
from ftcli.recipe.registry import TASKS, load
from ftcli.recipe.schema import Recipe


def check_command(command: str, recipe: Recipe) -> None:
    """A command refuses a task it cannot run, and says which command can."""
    wanted = TASKS[recipe.task].command
    if command in ("train", "align") and wanted != command:
        raise UserError(f"task {recipe.task} is run by `ftcli {wanted}`, not `ftcli {command}`")
    check_runnable(recipe)


def preflight(command: str, recipe: Recipe, overwrite: bool, resume: bool) -> None:
    """What `train`/`align` refuse without loading anything heavy (in about the time `validate` takes): the
    wrong command for the task, an output dir it may not use, the task's own refusals of the recipe."""
    from ftcli.run_dir import check_run_dir

    check_command(command, recipe)
    check_hub_sources(recipe)
    if not recipe.launch.machine_rank:  # only the main node owns the run dir
        check_run_dir(recipe, overwrite, resume)


def check_runnable(recipe: Recipe) -> None:
    """Refusals that need no model loaded (also run by `ftcli validate`)."""
    check_model_paths(recipe)
    check_method_fits_model(recipe)
    _check_reporters(recipe)


# training.report_to -> the packages its integration imports (any one will do)
REPORTER_PACKAGES = {
    "tensorboard": ("tensorboard", "tensorboardX"),
    "wandb": ("wandb",),
    "mlflow": ("mlflow",),
    "trackio": ("trackio",),
}


def _check_reporters(recipe: Recipe) -> None:
    """A tracker that is not installed fails here, not after the run dir exists and the data is prepared."""
    from importlib.util import find_spec

    for name in recipe.training.report_to:
        packages = REPORTER_PACKAGES.get(name, ())
        if packages and not any(find_spec(p) for p in packages):
            raise RecipeError(
                f"{name} is not installed; pip install {packages[0]}, or remove it", key="training.report_to"
            )


def run(
    command: str, recipe: Recipe, overwrite: bool, resume: bool, launcher: str = "auto", dry_run: bool = False
) -> dict:
    """`ftcli train` / `ftcli align`: in this process, or through accelerate-launched workers (ftcli.dispatch)
    when the recipe asks for more than one; the function the task's spec names does the training."""
    check_command(command, recipe)
    from ftcli import dispatch
    from ftcli.models.hardware import check_hardware, device_of, precision

    check_hardware(recipe)  # before any run dir is created or worker started
    if TASKS[recipe.task].check:
        load(TASKS[recipe.task].check)(recipe)

    workers = launcher == "accelerate" or (launcher == "auto" and dispatch.wants_workers(recipe))
    if workers and not dispatch.in_worker():
        config = dispatch.accelerate_config(recipe, precision(recipe))  # once: an `auto` port is probed here
        if dry_run:
            return dispatch.dry_run(recipe, command, config, resume)
        dispatch.check_engine(recipe, config)
        return dispatch.run_workers(recipe, command, config, overwrite, resume)
    if dry_run:
        return {
            "config": None,
            "command": f"in-process: ftcli {command} (one process on the {device_of(recipe)}"
            f"{_why_one_process(recipe, launcher)})",
        }
    train = load(TASKS[recipe.task].trainer)  # e.g. ftcli.tasks.dpo:run
    return train(recipe, overwrite=overwrite, resume=resume)


def run_prepare(recipe: Recipe) -> dict:
    check_command("prepare", recipe)
    from ftcli.tasks import prepare

    return prepare.run(recipe)


def _why_one_process(recipe: Recipe, launcher: str) -> str:
    """What a dry run must not hide: the launch settings that one in-process run leaves unused."""
    launch = recipe.launch
    if launcher == "python" and (launch.num_processes != 1 or launch.num_machines > 1):
        why = "--launcher python runs one process whatever launch: says"
    elif launch.num_processes == "auto":
        why = "launch.num_processes: auto found no GPU"
    else:
        return ""
    unused = f", so launch.strategy {launch.strategy} is not used" if launch.strategy != "ddp" else ""
    return f"; {why}{unused}"
