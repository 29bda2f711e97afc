"""The reward functions of `task: grpo`, built from the recipe's `align.rewards`. Each is called as TRL calls
reward functions, fn(prompts, completions, completion_ids, **columns) -> one float per completion, where a
completion is text, or [{"role": "assistant", "content": text}] when the prompts are conversations."""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from pathlib import Path

from ftcli.errors import RecipeError
from ftcli.recipe.schema import Recipe


def completion_text(completion) -> str:
    return completion if isinstance(completion, str) else completion[-1]["content"]


class Match:
    """1.0 when the completion's answer equals the reference (both extracted by `pattern`, both normalized)."""

    def __init__(self, spec):
        self.column, self.normalize = spec.column, spec.normalize
        self.pattern = re.compile(spec.pattern) if spec.pattern else None

    def answer(self, text: str, reference: bool = False) -> str | None:
        if self.pattern is not None:
            found = list(self.pattern.finditer(text))
            if found:
                last = found[-1]
                group = last.group(1) if self.pattern.groups else None  # (an optional group may be empty)
                text = group if group is not None else last.group(0)
            elif not reference:  # a completion without the answer format has no answer
                return None
        return " ".join(text.casefold().split()).strip(" .,;:!?\"'`") if self.normalize else text

    def __call__(self, prompts, completions, **columns) -> list[float]:
        references = columns[self.column]
        return [
            float(got is not None and got == self.answer(ref, reference=True))
            for got, ref in zip((self.answer(completion_text(c)) for c in completions), references)
        ]


class Regex:
    """1.0 when the completion matches (a format check)."""

    def __init__(self, spec):
        pattern = re.compile(spec.pattern, re.DOTALL)
        self.test = pattern.fullmatch if spec.full else pattern.search

    def __call__(self, prompts, completions, **columns) -> list[float]:
        return [float(self.test(completion_text(c)) is not None) for c in completions]


class Length:
    """0 up to max_tokens completion tokens, then -1 per max_tokens beyond."""

    def __init__(self, spec):
        self.max_tokens = spec.max_tokens

    def __call__(self, prompts, completions, completion_ids, **columns) -> list[float]:
        return [-max(0, len(ids) - self.max_tokens) / self.max_tokens for ids in completion_ids]


class Model:
    """A reward run's score of prompt + completion, encoded exactly as it trained (ftcli's pair tokenizer, its
    own chat template), in right-padded batches on the policy's device."""

    def __init__(self, spec, device: str, key: str = "align.rewards"):
        from ftcli.data.pairs import PairTokenizer
        from ftcli.infer.load import load_for_inference
        from ftcli.infer.prompting import inference_template

        recipe = reward_run(spec.path, device, key)
        self.model, tokenizer = load_for_inference(recipe)
        self.model.requires_grad_(False)
        self.pad = tokenizer.pad_token_id
        self.pairs = PairTokenizer(
            tokenizer, {}, inference_template(recipe, tokenizer), 10**9, 10**9, "truncate"
        )

    def __call__(self, prompts, completions, **columns) -> list[float]:
        import torch

        from ftcli.models.hardware import input_device

        sequences = []
        for prompt, completion in zip(prompts, completions):
            prompt_ids, answer_ids = self.pairs.encode(prompt, [completion_text(completion)])
            sequences.append(prompt_ids + answer_ids)
        scores = []
        for start in range(0, len(sequences), 16):
            batch = sequences[start : start + 16]
            width = max(map(len, batch))
            ids = torch.full((len(batch), width), self.pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, seq in enumerate(batch):
                ids[i, : len(seq)], mask[i, : len(seq)] = torch.tensor(seq), 1
            device = input_device(self.model)
            with torch.no_grad():
                logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            scores += logits[:, 0].float().tolist()
        return scores


def reward_run(path: str, device: str, key: str) -> Recipe:
    """The recipe of a finished `task: reward` run (or its merged/), to score with on `device`."""
    from ftcli.errors import UserError
    from ftcli.infer.target import resolve_target
    from ftcli.recipe.registry import TASKS

    try:
        recipe = resolve_target(path, [f"launch.device={device}"])
    except UserError as exc:
        raise RecipeError(str(exc), key=key) from None
    if TASKS[recipe.task].head != "score":
        raise RecipeError(
            f"{path} is a {recipe.task} run; a model reward needs a reward model (ftcli align, task: reward)",
            key=key,
        )
    return recipe


def python_function(reference: str, key: str):
    """The user's function named "module:function" or "/path/to/file.py:function"."""
    where, _, name = reference.rpartition(":")
    if not where or not name:
        raise RecipeError(f"{reference!r}: name it as module:function or path/to/file.py:function", key=key)
    try:
        if where.endswith(".py"):
            spec = importlib.util.spec_from_file_location(Path(where).stem, where)
            module = importlib.util.module_from_spec(spec)
            sys.modules.setdefault(spec.name, module)
            spec.loader.exec_module(module)
        else:
            if "" not in sys.path:  # a module in the working dir, as `python -c` would find it
                sys.path.insert(0, "")
            module = importlib.import_module(where)
    except Exception as exc:  # noqa: BLE001 - the user's code: any failure to import is theirs to fix
        raise RecipeError(f"cannot import {where}: {type(exc).__name__}: {exc}", key=key) from None
    function = getattr(module, name, None)
    if not callable(function):
        raise RecipeError(f"{where} has no function {name!r}", key=key)
    return function


def build_rewards(recipe: Recipe, device: str) -> tuple[list, list[float]]:
    """(reward functions named for TRL's logs: rewards/<name>/mean, their weights)."""
    functions, weights, names = [], [], set()
    for i, spec in enumerate(recipe.align.rewards):
        key = f"align.rewards.{i}"
        if spec.type == "python":
            function, name = (
                python_function(spec.function, f"{key}.function"),
                spec.function.rpartition(":")[2],
            )
        else:
            built = {"match": Match, "regex": Regex, "length": Length}.get(spec.type)
            function = built(spec) if built else Model(spec, device, f"{key}.path")
            name = spec.type
        if name in names:
            name = f"{name}_{i}"
        names.add(name)
        functions.append(_named(function, name))
        weights.append(spec.weight)
    return functions, weights


def _named(function, name: str):
    """TRL names a function's metrics by its __name__ (and awaits an async one: the wrapper stays async)."""
    import inspect

    if inspect.iscoroutinefunction(function):

        async def reward(*args, **kwargs):
            return await function(*args, **kwargs)

    else:

        def reward(*args, **kwargs):
            return function(*args, **kwargs)

    reward.__name__ = name
    return reward


def check_rewards(recipe: Recipe) -> None:
    """What can be known before the run: the functions import, reward runs are reward runs."""
    for i, spec in enumerate(recipe.align.rewards):
        if spec.type == "python":
            python_function(spec.function, f"align.rewards.{i}.function")
        elif spec.type == "model":
            reward_run(spec.path, "cpu", f"align.rewards.{i}.path")
