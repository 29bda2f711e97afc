"""The command line. Parsing only: each command loads the recipe and calls one function. No torch at import
time, so `ftcli --help` and `ftcli validate` stay instant."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
from pathlib import Path

import typer

from ftcli import __version__
from ftcli.errors import RecipeError, UserError, environment_error

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Fine-tune LLMs from one YAML recipe: ftcli train recipe.yaml [key.path=value ...]",
)

RecipeArg = typer.Argument(..., help="recipe YAML file (or a bundled recipe name, see `ftcli recipes`)")
OverridesArg = typer.Argument(
    None, help="dotted overrides, e.g. training.learning_rate=1e-4", show_default=False
)
JsonOpt = typer.Option(False, "--json", help="print the result as JSON on stdout")
DeviceOpt = typer.Option(
    None, "--device", help="auto | cuda | mps | cpu (launch.device; default auto: a GPU if any)"
)


def _with_device(overrides: list[str] | None, device: str | None) -> list[str]:
    return [*(overrides or []), *([f"launch.device={device}"] if device else [])]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ftcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="show tracebacks and library logs"),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="print the version"
    ),
) -> None:
    if debug:
        os.environ["FTCLI_DEBUG"] = "1"  # reaches accelerate-launched workers too
    else:
        os.environ.pop("FTCLI_DEBUG", None)
    _deepspeed_logs_to_stderr()


def _debug() -> bool:
    return os.environ.get("FTCLI_DEBUG") == "1"


def _load(recipe: str, overrides: list[str] | None):
    from ftcli.recipe import load_recipe
    from ftcli.recipe.catalog import find_recipe

    return load_recipe(find_recipe(recipe), overrides or [])


@contextlib.contextmanager
def _located(recipe):
    """Errors found after the recipe loaded (an optimizer on a CPU, a LoRA target, ...) still name its YAML line."""
    try:
        yield recipe
    except RecipeError as exc:
        if exc.key and not exc.where:
            exc.where = recipe.where(exc.key)
        raise


class _DeepSpeedToStderr:
    """A filter on DeepSpeed's logger, which writes to stdout through its own handler: stdout is for results, so
    its records go to stderr instead (errors only, unless --debug). Set before anything imports DeepSpeed, whose
    handler it outlives."""

    def __init__(self, level: int):
        self.level = level

    def filter(self, record) -> bool:
        if record.levelno >= self.level:
            sys.stderr.write(f"[{record.levelname}] DeepSpeed: {record.getMessage()}\n")
        return False


def _deepspeed_logs_to_stderr() -> None:
    import logging

    deepspeed = logging.getLogger("DeepSpeed")
    for old in [f for f in deepspeed.filters if isinstance(f, _DeepSpeedToStderr)]:
        deepspeed.removeFilter(old)
    deepspeed.addFilter(_DeepSpeedToStderr(logging.DEBUG if _debug() else logging.ERROR))


def _quiet_libraries() -> None:
    """Library progress bars and info logs would drown ours; --debug brings them back."""
    import logging

    _deepspeed_logs_to_stderr()
    if _debug():
        return
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    logging.getLogger("accelerate").setLevel(logging.ERROR)
    # TRL logs through accelerate's adapter, not transformers'
    logging.getLogger("trl").setLevel(logging.ERROR)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # e.g. "pip install kernels" hints on CPU
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


@app.command()
def validate(recipe: str = RecipeArg, overrides: list[str] | None = OverridesArg, as_json: bool = JsonOpt):
    """Check a recipe without running it and print it fully resolved (every default filled in)."""
    import yaml

    from ftcli import launch
    from ftcli.run_dir import recipe_document

    loaded = _load(recipe, overrides)
    with _located(loaded):
        launch.check_runnable(loaded)
    resolved = recipe_document(loaded)  # what the run freezes: secrets from the environment as ${env:NAME}
    if as_json:
        typer.echo(json.dumps(resolved, indent=2))
    else:
        typer.echo(yaml.safe_dump(resolved, sort_keys=False), nl=False)


@app.command()
def prepare(recipe: str = RecipeArg, overrides: list[str] | None = OverridesArg, as_json: bool = JsonOpt):
    """Tokenize and cache a recipe's data, and report rows kept, dropped, truncated and token counts."""
    from ftcli import launch

    loaded = _load(recipe, overrides)
    _quiet_libraries()
    with _located(loaded):
        result = launch.run_prepare(loaded)
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))


OverwriteOpt = typer.Option(False, "--overwrite", help="replace a non-empty output dir")
ResumeOpt = typer.Option(False, "--resume", help="continue from the newest checkpoint in the output dir")
LauncherOpt = typer.Option(
    "auto", "--launcher", help="auto | python (one process here, for debugging) | accelerate"
)
DryRunOpt = typer.Option(
    False, "--dry-run", help="print the launch command and accelerate config; run nothing"
)


@app.command()
def train(
    recipe: str = RecipeArg,
    overrides: list[str] | None = OverridesArg,
    overwrite: bool = OverwriteOpt,
    resume: bool = ResumeOpt,
    launcher: str = LauncherOpt,
    dry_run: bool = DryRunOpt,
    as_json: bool = JsonOpt,
):
    """Train (pretrain or SFT) with full fine-tuning, LoRA, QLoRA, prefix or prompt tuning."""
    _run("train", recipe, overrides, overwrite, resume, launcher, dry_run, as_json)


@app.command()
def align(
    recipe: str = RecipeArg,
    overrides: list[str] | None = OverridesArg,
    overwrite: bool = OverwriteOpt,
    resume: bool = ResumeOpt,
    launcher: str = LauncherOpt,
    dry_run: bool = DryRunOpt,
    as_json: bool = JsonOpt,
):
    """Preference training: dpo, kto or a reward model, with full, LoRA, QLoRA, prefix or prompt tuning."""
    _run("align", recipe, overrides, overwrite, resume, launcher, dry_run, as_json)


def _run(command, recipe, overrides, overwrite, resume, launcher, dry_run, as_json) -> None:
    from ftcli import launch

    if launcher not in ("auto", "python", "accelerate"):
        raise UserError(f"--launcher {launcher}: use auto, python or accelerate")
    loaded = _load(recipe, overrides)
    with _located(loaded):
        if not dry_run:
            launch.preflight(command, loaded, overwrite, resume)  # refusals before any heavy import
        _quiet_libraries()
        result = launch.run(
            command, loaded, overwrite=overwrite, resume=resume, launcher=launcher, dry_run=dry_run
        )
    if dry_run and not as_json:
        import shlex

        import yaml

        command_line = result["command"]
        typer.echo(shlex.join(command_line) if isinstance(command_line, list) else command_line)
        if result["config"]:
            typer.echo(yaml.safe_dump(result["config"], sort_keys=False), nl=False)
    elif as_json:
        typer.echo(json.dumps(result, indent=2, default=str))


@app.command()
def infer(
    target: str = typer.Argument(
        ..., help="a run dir (its frozen recipe rebuilds the model) or a recipe file"
    ),
    overrides: list[str] | None = OverridesArg,
    prompt: list[str] = typer.Option([], "--prompt", "-p", help="a prompt (repeatable)"),
    input_path: str | None = typer.Option(
        None, "--input", "-i", help=".txt / .jsonl file of prompts, - for stdin"
    ),
    image: list[str] = typer.Option(
        [], "--image", help="caption runs: an image to describe or ask about (repeatable)"
    ),
    mode: str | None = typer.Option(None, "--mode", help="generate | score (reward models) | perplexity"),
    chat: bool = typer.Option(False, "--chat", help="interactive multi-turn session, streamed"),
    no_template: bool = typer.Option(
        False, "--no-template", help="send prompts as they are, no chat template"
    ),
    raw: bool = typer.Option(
        False, "--raw", help="print completions as they are (newlines and all), not one per line"
    ),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", min=1),
    temperature: float | None = typer.Option(None, "--temperature", min=0.0, help="0 = greedy (default)"),
    top_p: float | None = typer.Option(None, "--top-p"),
    top_k: int | None = typer.Option(None, "--top-k"),
    num_return_sequences: int | None = typer.Option(None, "--num-return-sequences", min=1),
    seed: int | None = typer.Option(None, "--seed"),
    split: str | None = typer.Option(
        None, "--split", help="perplexity: train or eval (default eval if held out)"
    ),
    device: str | None = DeviceOpt,
    as_json: bool = JsonOpt,
):
    """Generate, score (reward models) or measure perplexity with a trained run or a recipe's model. Results go
    to stdout in input order, one line each (newlines and control characters escaped as in JSON; --raw prints
    them as they are), or JSONL with --json."""
    _require_stdout()
    from ftcli.infer.run import run_infer
    from ftcli.infer.target import resolve_target

    cli = {
        "mode": mode,
        "chat_template": False if no_template else None,
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "num_return_sequences": num_return_sequences,
        "seed": seed,
    }
    extra = [f"infer.{k}={json.dumps(v)}" for k, v in cli.items() if v is not None]
    loaded = resolve_target(target, [*_with_device(overrides, device), *extra])
    _quiet_libraries()

    def emit(line: str) -> None:
        typer.echo(line)
        sys.stdout.flush()

    style = "json" if as_json else "raw" if raw else "line"
    with _located(loaded):
        run_infer(loaded, prompt, input_path, style, chat, split, emit, image)


@app.command(name="eval")
def evaluate(
    target: str = typer.Argument(..., help="a run dir, merged or model dir, recipe, hub id or builtin:NAME"),
    overrides: list[str] | None = OverridesArg,
    tasks: str = typer.Option(..., "--tasks", "-t", help="lm-eval task names, comma-separated"),
    include_path: str | None = typer.Option(
        None,
        "--include-path",
        help="a folder of your own task YAMLs (their data_files relative to it), e.g. recipes/eval",
    ),
    limit: int | None = typer.Option(
        None, "--limit", min=1, help="at most N examples per task (a quick look)"
    ),
    num_fewshot: int | None = typer.Option(None, "--num-fewshot", min=0),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    compare_base: bool = typer.Option(False, "--compare-base", help="also score the run's starting model"),
    device: str | None = DeviceOpt,
    as_json: bool = JsonOpt,
):
    """Run lm-evaluation-harness tasks in-process (pip install ".[eval]" in a checkout of ftcli). The table (or
    --json) goes to stdout; a run dir also keeps every evaluation in its eval.json."""
    _require_stdout()
    from ftcli import report
    from ftcli.infer.evaluate import check_evaluable, check_tasks, record, rows, run_eval
    from ftcli.infer.target import resolve_target, starting_model

    overrides = _with_device(overrides, device)
    loaded = resolve_target(target, overrides)
    check_evaluable(loaded)
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    check_tasks(names, include_path)  # an unknown task is refused before anything heavy loads
    base = starting_model(target, overrides) if compare_base else None
    _quiet_libraries()
    with _located(loaded):
        result = run_eval(loaded, names, include_path, limit, num_fewshot, batch_size, base)
    record(Path(target), result)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        report.print_eval(rows(result), file=sys.stdout)


@app.command()
def merge(
    run_dir: str = typer.Argument(..., help="a LoRA/QLoRA run dir"),
    overrides: list[str] | None = OverridesArg,
    out: str = typer.Option(..., "--out", "-o", help="where to write the merged model"),
    overwrite: bool = OverwriteOpt,
    push_to_hub: str | None = typer.Option(
        None, "--push-to-hub", help="also upload to this hub repo (needs a token)"
    ),
    device: str | None = DeviceOpt,
    as_json: bool = JsonOpt,
):
    """Merge a run's adapter into full weights (QLoRA: base dequantized) loadable by plain transformers."""
    from ftcli.infer.target import resolve_target
    from ftcli.models import export

    recipe = resolve_target(run_dir, _with_device(overrides, device))
    if push_to_hub:
        export.require_hub_token(push_to_hub)
    _quiet_libraries()
    with _located(recipe):
        merged = export.export_run(recipe, Path(run_dir), Path(out), overwrite, full_ok=False)
    result = {
        "merged": str(merged),
        "pushed": export.push_to_hub(merged, push_to_hub) if push_to_hub else None,
    }
    typer.echo(json.dumps(result) if as_json else str(merged))


@app.command("export")
def export_(
    run_dir: str = typer.Argument(..., help="a run dir (LoRA/QLoRA: merged into the base; full: re-saved)"),
    overrides: list[str] | None = OverridesArg,
    out: str = typer.Option(..., "--out", "-o", help="where to write the model"),
    dtype: str | None = typer.Option(
        None, "--dtype", help="f16 | bf16 | f32 (default: the run's compute dtype)"
    ),
    overwrite: bool = OverwriteOpt,
    push_to_hub: str | None = typer.Option(
        None, "--push-to-hub", help="also upload to this hub repo (needs a token)"
    ),
    device: str | None = DeviceOpt,
    as_json: bool = JsonOpt,
):
    """Write a run as one standalone model dir that transformers (4.x and 5.x), vLLM/TGI and llama.cpp's
    converter load: safetensors, config.json with the KV cache on, the base's tokenizer files, the chat template."""
    from ftcli.infer.target import resolve_target
    from ftcli.models import export

    if dtype is not None and dtype not in export.DTYPES:
        raise UserError(f"--dtype {dtype}: use one of {', '.join(export.DTYPES)}")
    recipe = resolve_target(run_dir, _with_device(overrides, device))
    if push_to_hub:
        export.require_hub_token(push_to_hub)
    _quiet_libraries()
    with _located(recipe):
        written = export.export_run(recipe, Path(run_dir), Path(out), overwrite, dtype)
    result = {
        "exported": str(written),
        "pushed": export.push_to_hub(written, push_to_hub) if push_to_hub else None,
    }
    typer.echo(json.dumps(result) if as_json else str(written))


@app.command("recipes")
def list_recipes(as_json: bool = JsonOpt):
    """List the bundled recipes with a one-line description each."""
    from ftcli.recipe.catalog import bundled_recipes

    found = bundled_recipes()
    if as_json:
        typer.echo(json.dumps([{"name": n, "path": str(p), "description": d} for n, p, d in found], indent=2))
        return
    width = max((len(n) for n, _, _ in found), default=0)
    for name, _, description in found:
        typer.echo(f"{name.ljust(width)}  {description}")


def _click_exceptions() -> tuple[tuple, tuple, tuple]:
    """typer 0.29+ vendors click and raises its exceptions (public: TyperException, Exit, Abort); older typer
    raises click's own."""
    exits, usage, aborts = [typer.Exit], [getattr(typer, "TyperException", ())], [typer.Abort]
    try:
        import click

        exits.append(click.exceptions.Exit)
        usage.append(click.ClickException)
        aborts.append(click.exceptions.Abort)
    except ImportError:
        pass
    return tuple(exits), tuple(u for u in usage if u), tuple(aborts)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors exit 2 with one line, internal errors exit 1 naming where they happened, Ctrl-C
    exits 130 and SIGTERM 143 at any stage; a closed stdout pipe (`| head`) ends quietly with 0."""
    from ftcli import redact

    redact.add_environment()
    exits, usage_errors, aborts = _click_exceptions()
    command = typer.main.get_command(app)
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv[1:]:  # accept it after the command too
        argv.remove("--debug")
        argv.insert(0, "--debug")
    try:
        with command.make_context("ftcli", argv) as ctx:
            command.invoke(ctx)
        code = 0
    except exits as exc:
        code = exc.exit_code
    except usage_errors as exc:
        exc.show()
        code = 2
    except aborts:
        code = 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    except UserError as exc:
        if _debug():
            raise
        print(redact.mask(f"error: {exc}"), file=sys.stderr)
        code = exc.exit_code
    except OSError as exc:
        if exc.errno == errno.EPIPE:  # a closed pipe (`| head`) is not an error
            code = 0  # (BrokenPipeError)
        elif environment_error(exc) and not _debug():
            print(redact.mask(f"error: {environment_error(exc)}"), file=sys.stderr)
            code = 2
        else:
            code = _internal_error(exc)
    except Exception as exc:
        code = _internal_error(exc)
    _quiet_stdout()
    sys.exit(code)


def _internal_error(exc: Exception) -> int:
    """One line naming where inside ftcli it broke (the innermost ftcli frame), or the traceback with --debug."""
    if _debug():
        raise exc
    import traceback

    from ftcli import redact

    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if f"{os.sep}ftcli{os.sep}" in f.filename]
    at = lambda frame: f"{Path(frame.filename).name}:{frame.lineno}"
    where = f"in {at(frames[-1])}" if frames else "?"
    if ours and ours[-1] is not frames[-1]:
        where += f", reached from {at(ours[-1])}"
    print(
        redact.mask(
            f"internal error: {type(exc).__name__}: {exc} ({where}; rerun with --debug for the traceback)"
        ),
        file=sys.stderr,
    )
    return 1


def _quiet_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so the interpreter's last flush cannot fail (exit 120)."""
    if sys.stdout is None:
        return
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass


def _require_stdout() -> None:
    """Results go to stdout; with stdout closed (`>&-`) they would vanish while the command says it worked."""
    if sys.stdout is None or getattr(
        sys.stdout, "closed", False
    ):  # Python's stdout when fd 1 is closed: None
        raise UserError(
            "stdout is closed, so the results would be lost; redirect it to a file (or /dev/null)"
        )
