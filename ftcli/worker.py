"""The entry point accelerate launches in every worker:
`python -m ftcli.worker COMMAND RUN_DIR RECIPE_FILE [--resume]`. It runs the task on the recipe the launching
command froze (RUN_DIR/recipe.resolved.yaml on the main node), writing into RUN_DIR."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    command, run_dir, recipe_file, *rest = argv
    os.environ["FTCLI_WORKER"] = "1"
    from ftcli import launch, redact, report
    from ftcli.cli import _quiet_libraries
    from ftcli.dispatch import is_main_process
    from ftcli.errors import UserError
    from ftcli.recipe import load_recipe

    report.console.quiet = not is_main_process()  # one set of tables and progress
    redact.add_environment()
    try:
        recipe = load_recipe(Path(recipe_file))
        recipe.output.dir = run_dir
        _quiet_libraries()
        launch.run(command, recipe, overwrite=False, resume="--resume" in rest)
        _shut_down_process_group(wait_for_others=True)
    except UserError as exc:
        _shut_down_process_group(wait_for_others=False)
        if not is_main_process():  # the main worker's error reaches the user through summary.json and ftcli
            print(redact.mask(f"[rank {os.environ.get('RANK')}] error: {exc}"), file=sys.stderr)
        return exc.exit_code
    except Exception as exc:
        _shut_down_process_group(wait_for_others=False)
        if os.environ.get("FTCLI_DEBUG") == "1":
            raise
        if not is_main_process():
            print(
                redact.mask(f"[rank {os.environ.get('RANK')}] internal error: {type(exc).__name__}: {exc}"),
                file=sys.stderr,
            )
        return 1
    return 0


def _shut_down_process_group(wait_for_others: bool) -> None:
    """Leave the process group cleanly: a worker exiting with gloo/nccl threads alive aborts ("terminate called
    without an active exception") and fails a finished run. On success, wait until every rank is done first."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if wait_for_others:
            dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
