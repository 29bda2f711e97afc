"""`ftcli infer`: pick the mode, read the inputs, print results in input order (stdout: results only)."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable

from ftcli import report
from ftcli.errors import UserError
from ftcli.infer.inputs import read_inputs
from ftcli.infer.load import load_for_inference
from ftcli.infer.prompting import inference_template
from ftcli.recipe.registry import TASKS
from ftcli.recipe.schema import InferSpec, Recipe


def run_infer(
    recipe: Recipe,
    prompts: list[str],
    input_path: str | None,
    style: str,  # json | line | raw
    chat: bool,
    split: str | None,
    emit: Callable[[str], None],
    images: list[str] | None = None,
) -> int:
    """Returns how many results were written."""
    spec: InferSpec = recipe.infer
    mode = spec.mode  # resolved and checked against the task's infer modes when the recipe loaded
    if chat and mode != "generate":
        raise UserError(f"--chat generates; a {recipe.task} model does {mode} here")
    if TASKS[recipe.task].head in ("git", "vlm"):
        return _describe(recipe, prompts, input_path, images or [], style, chat, mode, emit)
    if images:
        raise UserError(f"--image: this is a {recipe.task} model; images go to caption runs (task: caption)")
    items = (
        [] if chat or mode == "perplexity" else read_inputs(prompts or spec.prompts, input_path or spec.input)
    )
    if mode != "perplexity" and not chat and not items:
        raise UserError("nothing to do: give --prompt TEXT, --input FILE (or - for stdin), or infer.prompts")
    model, tokenizer = load_for_inference(recipe)
    template = inference_template(recipe, tokenizer)

    if chat:
        from ftcli.infer.chat import chat as chat_loop

        chat_loop(model, tokenizer, spec, template)
        return 0
    if mode == "perplexity":
        from ftcli.infer.perplexity import perplexity

        result = perplexity(model, tokenizer, recipe, split, spec.batch_size)
        emit(json.dumps(result) if style == "json" else f"{result['perplexity']:.4f}")
        report.console.print(
            f"{result['split']}: loss {result['loss']:.4f}, perplexity {result['perplexity']:.3f} "
            f"over {result['tokens']} tokens ({result['rows']} rows)"
        )
        return 1
    streamer = None
    if mode == "score":
        from ftcli.infer.score import score

        results = score(model, tokenizer, items, template)
        text = lambda r: (
            f"{r['winner']}\t{r['chosen_score']:.4f}\t{r['rejected_score']:.4f}"
            if "winner" in r
            else f"{r['score']:.4f}"
        )
    else:
        from ftcli.infer.generate import generate

        if len(items) == 1 and spec.num_return_sequences == 1 and style != "json" and sys.stdout.isatty():
            from transformers import TextStreamer

            streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        results = generate(model, tokenizer, items, spec, template, streamer)
        text = lambda r: r["output"]
    return _emit_all(results, text, style, emit, streamer is not None, len(items) * spec.num_return_sequences)


def _emit_all(results, text, style: str, emit, streamed: bool, total: int) -> int:
    """Each result on stdout as it comes; in a log (stderr no terminal), a progress line now and then."""
    progress = None if report.console.is_terminal else report.PlainProgress("infer", total, " results")
    count = 0
    for result in results:
        line = json.dumps(result, ensure_ascii=False) if style == "json" else text(result)
        if not streamed:
            emit(line if style != "line" else one_line(line))
        count += 1
        if progress:
            progress.update(count)
    return count


# What would start a new line for a line-based reader: newlines, other C0/C1 controls, DEL, Unicode separators.
_BREAKS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def one_line(text: str) -> str:
    """A completion as exactly one line, escaped as in JSON (backslash first), so `wc -l` counts results and
    `head -n 3` takes three."""
    text = text.replace("\\", "\\\\")
    return _BREAKS.sub(lambda m: _NAMED.get(m.group(), f"\\u{ord(m.group()):04x}"), text)


def _describe(recipe: Recipe, prompts, input_path, images, style, chat, mode, emit) -> int:
    """Vision-language runs: a GIT caption run, or a pretrained VLM's (task: vlm)."""
    if chat or mode != "generate":
        raise UserError(
            f"a {recipe.task} model generates from images: --chat and --mode score/perplexity do not apply"
        )
    if TASKS[recipe.task].head == "vlm":
        from ftcli.infer.load import load_vlm_for_inference
        from ftcli.infer.vision import answer

        items = read_inputs(prompts or recipe.infer.prompts, input_path or recipe.infer.input, images)
        if not items:
            raise UserError(
                "nothing to do: give --image PATH (with --prompt for a question), or --input FILE of rows "
                "with an 'image' field"
            )
        model, processor, template = load_vlm_for_inference(recipe)
        results = answer(model, processor, items, recipe.infer, template)
        total = len(items) * recipe.infer.num_return_sequences
        return _emit_all(results, lambda r: r["output"], style, emit, False, total)
    from ftcli.infer.describe import describe
    from ftcli.models.multimodal import load_git_for_inference

    items = read_inputs(prompts or recipe.infer.prompts, input_path or recipe.infer.input, images)
    if not items:
        raise UserError(
            "nothing to do: give --image PATH (with --prompt for a question), or --input FILE of rows "
            "with an 'image' field"
        )
    if not recipe.model.adapter:
        raise UserError("a caption recipe has no trained projection yet; run `ftcli infer` on its run dir")
    model, tokenizer, processor = load_git_for_inference(recipe)
    template = inference_template(recipe, tokenizer)
    results = describe(model, tokenizer, processor, items, recipe.infer, template, recipe)
    total = len(items) * recipe.infer.num_return_sequences
    return _emit_all(results, lambda r: r["output"], style, emit, False, total)
