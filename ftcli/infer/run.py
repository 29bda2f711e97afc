"""`ftcli infer`: pick the mode, read the inputs, print results in input order (stdout: results only)."""

from __future__ import annotations

import json
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
    as_json: bool,
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
    if TASKS[recipe.task].head == "git":
        return _describe(recipe, prompts, input_path, images or [], as_json, chat, mode, emit)
    if images:
        raise UserError(f"--image: this is a {recipe.task} model; images go to caption runs (task: caption)")
    items = (
        [] if chat or mode == "perplexity" else read_inputs(prompts or spec.prompts, input_path or spec.input)
    )
    if mode != "perplexity" and not chat and not items:
        raise UserError("nothing to do: give --prompt TEXT, --input FILE (or - for stdin), or infer.prompts")
    model, tokenizer = load_for_inference(recipe)
    template = inference_template(recipe, tokenizer, spec.raw)

    if chat:
        from ftcli.infer.chat import chat as chat_loop

        chat_loop(model, tokenizer, spec, template)
        return 0
    if mode == "perplexity":
        from ftcli.infer.perplexity import perplexity

        result = perplexity(model, tokenizer, recipe, split, spec.batch_size)
        emit(json.dumps(result) if as_json else f"{result['perplexity']:.4f}")
        report.console.print(
            f"{result['split']}: loss {result['loss']:.4f}, perplexity {result['perplexity']:.3f} "
            f"over {result['tokens']} tokens ({result['rows']} rows)"
        )
        return 1
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

        streamer = None
        if len(items) == 1 and spec.num_return_sequences == 1 and not as_json and sys.stdout.isatty():
            from transformers import TextStreamer

            streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        results = generate(model, tokenizer, items, spec, template, streamer)
        text = (lambda r: "") if streamer else (lambda r: r["output"])
    count = 0
    for result in results:
        line = json.dumps(result, ensure_ascii=False) if as_json else text(result)
        if line or not streamer:
            emit(line)
        count += 1
    return count


def _describe(recipe: Recipe, prompts, input_path, images, as_json, chat, mode, emit) -> int:
    from ftcli.infer.describe import describe
    from ftcli.models.multimodal import load_git_for_inference

    if chat or mode != "generate":
        raise UserError(
            "a caption model generates from images: --chat and --mode score/perplexity do not apply"
        )
    items = read_inputs(prompts or recipe.infer.prompts, input_path or recipe.infer.input, images)
    if not items:
        raise UserError(
            "nothing to do: give --image PATH (with --prompt for a question), or --input FILE of rows "
            "with an 'image' field"
        )
    if not recipe.model.adapter:
        raise UserError("a caption recipe has no trained projection yet; run `ftcli infer` on its run dir")
    model, tokenizer, processor = load_git_for_inference(recipe)
    template = inference_template(recipe, tokenizer, recipe.infer.raw)
    count = 0
    for result in describe(model, tokenizer, processor, items, recipe.infer, template, recipe):
        emit(json.dumps(result, ensure_ascii=False) if as_json else result["output"])
        count += 1
    return count
