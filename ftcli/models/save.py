"""The final outputs of a run, in plain Hugging Face layout: a PEFT adapter or full safetensors weights, the
tokenizer with its chat template, and (output.merge) adapter-merged full weights in <run>/merged."""

from __future__ import annotations

import json
from pathlib import Path

from ftcli.errors import UserError
from ftcli.models.load import inference_config
from ftcli.recipe.schema import Recipe


def save_model_outputs(model, tokenizer, recipe: Recipe, out: Path, weights: bool = True) -> dict:
    """`weights=False` when the trainer has saved them already (sharded workers gather them there)."""
    is_peft = hasattr(model, "peft_config")
    inference_config(model)
    if weights:  # only the trained adapter: DPO may hold a frozen "ref" copy beside it
        model.save_pretrained(out, safe_serialization=True, **({"selected_adapters": ["default"]} if is_peft else {}))
    elif (out / "config.json").exists():
        _set_use_cache(out / "config.json")
    save_tokenizer(tokenizer, out)
    saved = {"kind": "adapter" if is_peft else "full", "path": str(out)}
    if recipe.output.merge:
        if recipe.method.type in ("prefix", "prompt"):
            raise UserError(f"output.merge: {recipe.method.type} tuning adds virtual tokens and cannot be merged")
        if is_peft:
            saved["merged"] = str(merge_adapter(recipe, out, out / "merged"))
    return saved


def save_tokenizer(tokenizer, out: Path) -> None:
    tokenizer.save_pretrained(out)
    # transformers 5 writes its own class name, which transformers 4.x (and tools pinned to it) cannot load.
    config_file = out / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def merge_adapter(recipe: Recipe, adapter_dir: Path, out: Path) -> Path:
    """Base (QLoRA: dequantized to the compute dtype) + adapter -> full weights loadable without peft."""
    import peft

    from ftcli.models.load import load_base_model, load_tokenizer

    base = load_base_model(recipe)
    if recipe.method.type == "qlora":
        base = base.dequantize()
        if hasattr(base.config, "quantization_config"):
            del base.config.quantization_config
    model = peft.PeftModel.from_pretrained(base, str(adapter_dir))
    merged = model.merge_and_unload()
    inference_config(merged)
    merged.save_pretrained(out, safe_serialization=True)
    save_tokenizer(load_tokenizer(recipe.model), out)
    return out


def _set_use_cache(config_file: Path) -> None:
    config = json.loads(config_file.read_text())
    config["use_cache"] = True
    config_file.write_text(json.dumps(config, indent=2) + "\n")
