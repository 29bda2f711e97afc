"""Load a recipe's model for inference: the base (quantized as it was trained), plus its adapter if any."""

from __future__ import annotations

from pathlib import Path

from ftcli import report
from ftcli.errors import RecipeError
from ftcli.models.hardware import compute_dtype, device_of
from ftcli.models.load import inference_config, load_base_model, load_tokenizer
from ftcli.recipe.schema import Recipe


def load_for_inference(recipe: Recipe):
    """(model in eval mode with its KV cache on, on the recipe's device, tokenizer). A run dir's own tokenizer (with
    the chat template it was trained with) wins over the base's."""
    adapter = recipe.model.adapter
    own = adapter and (Path(adapter) / "tokenizer_config.json").exists()
    tokenizer = load_tokenizer(recipe.model, source=adapter if own else None)
    device = device_of(recipe)
    report.phase(
        f"loading {recipe.model.name}{f' + {adapter}' if adapter else ''} on the {device} "
        f"({str(compute_dtype(recipe)).removeprefix('torch.')})"
    )
    model = load_base_model(recipe, device=device)
    if adapter:
        import peft

        try:
            model = peft.PeftModel.from_pretrained(model, adapter)
        except (OSError, ValueError, RuntimeError) as exc:
            raise RecipeError(
                f"cannot load adapter {adapter} onto {recipe.model.name}: {str(exc).splitlines()[0]}",
                key="model.adapter",
            ) from None
    model.eval()
    inference_config(model)
    return model, tokenizer


def load_vlm_for_inference(recipe: Recipe):
    """(model, processor, chat template) of a vision-language run (task: vlm): the run dir's processor (with the
    template it trained with) wins over the base's."""
    from ftcli.data.templates import resolve_template
    from ftcli.models.load import load_processor

    adapter = recipe.model.adapter
    own = adapter and (Path(adapter) / "tokenizer_config.json").exists()
    processor = load_processor(recipe.model, source=adapter if own else None)
    model, _ = load_for_inference(recipe)
    return model, processor, resolve_template(recipe.data.template, processor)
