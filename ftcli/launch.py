"""Where a command runs. One process: here, in-process. (Multi-process dispatch through `accelerate launch`
arrives with its own issue; until then a recipe asking for it is refused with the reason.)"""

from __future__ import annotations

from ftcli.errors import UserError
from ftcli.models.compat import check_method_fits_model
from ftcli.recipe.schema import TASK_COMMAND, Recipe


def check_command(command: str, recipe: Recipe) -> None:
    """A command refuses a task it cannot run, and says which command can."""
    wanted = TASK_COMMAND[recipe.task]
    if command in ("train", "align") and wanted != command:
        raise UserError(f"task {recipe.task} is run by `ftcli {wanted}`, not `ftcli {command}`")
    if recipe.task == "caption":
        raise UserError("task caption (multimodal GIT training) is not available in this version yet")
    check_method_fits_model(recipe)


def run_train(recipe: Recipe, overwrite: bool, resume: bool) -> dict:
    check_command("train", recipe)
    from ftcli.tasks import sft

    return sft.run(recipe, overwrite=overwrite, resume=resume)


def run_prepare(recipe: Recipe) -> dict:
    if recipe.task in ("dpo", "reward"):
        raise UserError(f"`ftcli prepare` for task {recipe.task} comes with `ftcli align`, not available yet")
    check_command("prepare", recipe)
    from ftcli.tasks import prepare

    return prepare.run(recipe)
