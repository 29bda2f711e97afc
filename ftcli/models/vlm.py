"""Pretrained vision-language models (task: vlm), as transformers' AutoModelForImageTextToText loads them: which
modules are the language model and which the vision tower, found by name, for LoRA's default targets (the language
model's linear layers) and full fine-tuning's default frozen part (the vision tower)."""

from __future__ import annotations

import re

from ftcli.errors import RecipeError

LANGUAGE_MODEL = ("language_model", "text_model")  # (text_model: Idefics3, SmolVLM)
VISION_TOWER = ("vision_tower", "visual", "vision_model")


def part_name(model, names: tuple[str, ...]) -> str | None:
    """The full name of the first module whose own name is one of `names` (model.language_model, ...)."""
    return next((n for n, _ in model.named_modules() if n.rsplit(".", 1)[-1] in names), None)


def language_model_targets(model) -> str:
    """A peft target regex for every linear layer of the language model: not the vision tower, the projector or
    the head."""
    import torch

    prefix = part_name(model, LANGUAGE_MODEL)
    if prefix is None:
        raise RecipeError(
            "found no language_model module in this model; name the layers to adapt in method.target_modules",
            key="method.target_modules",
        )
    leaves = sorted(
        {
            n.rsplit(".", 1)[-1]
            for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and n.startswith(prefix + ".")
        }
    )
    return rf"{re.escape(prefix)}\..*\.({'|'.join(map(re.escape, leaves))})"


def vision_tower_key(model) -> str | None:
    """The parameter-name prefix of the vision tower, frozen by default in full fine-tuning."""
    name = part_name(model, VISION_TOWER)
    return f"{name}." if name else None
