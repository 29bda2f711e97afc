"""`ftcli eval`: lm-evaluation-harness tasks on what `ftcli infer` would load (a run dir's base + adapter, QLoRA
base quantized as trained; a merged or model dir; a recipe's model), in this process. lm-eval's own HFLM wraps
the model and its own `simple_evaluate` runs the tasks, so the scores are lm-eval's, not a re-implementation."""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import json
import logging
import os
import sys
import time
from pathlib import Path

from ftcli import report
from ftcli.errors import UserError
from ftcli.infer.load import load_for_inference
from ftcli.recipe.registry import METHODS, TASKS
from ftcli.recipe.schema import Recipe

EXTRA = 'pip install ".[eval]" (in a checkout of ftcli)'


def check_evaluable(recipe: Recipe) -> None:
    if not TASKS[recipe.task].evaluable:
        raise UserError(f"task {recipe.task}: lm-eval's tasks score a text LM's likelihoods and generations")
    if not METHODS[
        recipe.method.type
    ].evaluable:  # peft puts the virtual tokens' positions in front of the logits
        raise UserError(
            "a prompt-tuning run shifts its logits by its virtual tokens, which lm-eval would score "
            "at the wrong positions; evaluate LoRA, full or prefix runs"
        )


def record(target: Path, result: dict) -> None:
    """A run dir keeps every evaluation in eval.json. A history that cannot be read is kept aside, renamed, and a
    new one started: the evaluation that just ran is never lost to an old file."""
    from ftcli import report
    from ftcli.run_dir import RESOLVED

    if not (target / RESOLVED).exists():
        return
    history = target / "eval.json"
    earlier = []
    if history.exists():
        try:
            earlier = json.loads(history.read_text())
            if not isinstance(earlier, list):
                raise ValueError("not a list")
        except (ValueError, UnicodeDecodeError) as exc:
            kept = history.with_name(f"eval.json.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
            history.rename(kept)
            report.console.print(
                f"[yellow]warning: {history} could not be read ({exc}); kept as {kept.name}, "
                "and a new history started[/]"
            )
            earlier = []
    report.write_json(history, [*earlier, {"target": str(target.resolve()), **result}])


def check_tasks(tasks: list[str], include_path: str | None) -> Path | None:
    """Refuse unknown task names before anything heavy loads: lm-eval's index of its own tasks takes seconds to
    build, so the names are kept in ftcli's cache per lm-eval version; an include path's few are read live.
    Returns the include path's folder."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UserError(f"ftcli eval runs lm-evaluation-harness, which is not installed: {EXTRA}") from None
    if not tasks:
        raise UserError("--tasks: name at least one task, e.g. --tasks hellaswag,arc_easy")
    folder = Path(include_path).resolve() if include_path else None
    if folder is not None and not folder.is_dir():
        raise UserError(f"--include-path {include_path}: not a folder of lm-eval task YAML files")
    known = set(_registry_tasks())
    if folder is not None:
        known |= set(TaskManager(include_path=str(folder), include_defaults=False).all_tasks)
    for task in tasks:
        if task not in known and not fnmatch.filter(known, task):
            close = difflib.get_close_matches(task, sorted(known), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            where = (
                f"lm-eval's registry or {folder}"
                if folder
                else "lm-eval's registry (local tasks: --include-path)"
            )
            raise UserError(f"--tasks: {task!r} is not a task of {where}{hint}")
    return folder


def _registry_tasks() -> list[str]:
    import importlib.metadata

    from ftcli.paths import cache_dir

    index = cache_dir("lm-eval") / f"tasks-{importlib.metadata.version('lm_eval')}.json"
    try:
        return json.loads(index.read_text())
    except (OSError, ValueError):
        from lm_eval.tasks import TaskManager

        names = TaskManager().all_tasks
        index.write_text(json.dumps(names))
        return names


def run_eval(
    recipe: Recipe,
    tasks: list[str],
    include_path: str | None,
    limit: int | None,
    num_fewshot: int | None,
    batch_size: int,
    base: Recipe | None = None,
) -> dict:
    """{"tasks", "limit", "num_fewshot", "model": {task: {metric: value}}, ["base": ...]}. lm-eval's own
    progress bars are off where stderr is a log (they are carriage-return redraws), and each task gets a line."""
    folder = check_tasks(tasks, include_path)
    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_DISABLE", "1")
    from lm_eval.tasks import TaskManager

    for logger in (logging.getLogger("lm-eval"), logging.getLogger("lm_eval")):
        logger.setLevel(logging.ERROR if not os.environ.get("FTCLI_DEBUG") else logging.INFO)
    manager = TaskManager(include_path=str(folder) if folder else None)
    result = {"tasks": tasks, "limit": limit, "num_fewshot": num_fewshot}
    for name, target in (("model", recipe), ("base", base)):
        if target is not None:
            started = time.perf_counter()
            report.phase(f"evaluating the {'fine-tune' if name == 'model' else 'base'} on {', '.join(tasks)}")
            result[name] = _evaluate(target, tasks, manager, folder, limit, num_fewshot, batch_size)
            result[f"{name}_seconds"] = round(time.perf_counter() - started, 2)
    return result


def _evaluate(recipe: Recipe, tasks, manager, folder, limit, num_fewshot, batch_size) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    model, tokenizer = load_for_inference(recipe)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    with _inside(folder):  # local tasks name their data_files relative to their folder
        out = simple_evaluate(
            model=lm,
            tasks=tasks,
            task_manager=manager,
            limit=limit,
            num_fewshot=num_fewshot,
            log_samples=False,
        )
    return {
        task: {
            metric.split(",")[0]: value
            for metric, value in metrics.items()
            if isinstance(value, (int, float)) and "," in metric
        }
        for task, metrics in out["results"].items()
    }


@contextlib.contextmanager
def _inside(folder: Path | None):
    if folder is None:
        yield
        return
    here = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(here)


def rows(result: dict) -> list[tuple[str, str, float, float | None]]:
    """(task, metric, model value, base value or None) for every metric that is not a standard error."""
    base = result.get("base") or {}
    out = []
    for task, metrics in result["model"].items():
        for metric, value in metrics.items():
            if not metric.endswith("_stderr"):
                out.append((task, metric, value, base.get(task, {}).get(metric)))
    return out
