"""The final outputs of a run, in plain Hugging Face layout: a PEFT adapter or full safetensors weights, the
tokenizer with its chat template, and (output.merge) adapter-merged full weights in <run>/merged.

The layout rules live here, for every run, merge and export: the base's tokenizer files copied byte for byte
(llama.cpp's converter, for one, identifies a tokenizer by hashing what it produces, and transformers 5 would
re-serialize it), a tokenizer_config.json transformers 4.x loads too, the chat template the run trained with,
config.json with the KV cache on, safetensors only."""

from __future__ import annotations

from pathlib import Path

from ftcli.models.load import inference_config, model_source
from ftcli.models.loadable import loadable_model_config, loadable_tokenizer_config
from ftcli.recipe.registry import METHODS
from ftcli.recipe.schema import ModelSpec, Recipe


def save_model_outputs(
    model, tokenizer, recipe: Recipe, out: Path, weights: bool = True, chat_template: str | None = None
) -> dict:
    """`weights=False` when the trainer has saved them already (sharded workers gather them there);
    `chat_template`: the template the run trained with when it is not the tokenizer's own."""
    is_peft = hasattr(model, "peft_config")
    inference_config(model)
    if weights:  # only the trained adapter: DPO may hold a frozen "ref" copy beside it
        model.save_pretrained(
            out, safe_serialization=True, **({"selected_adapters": ["default"]} if is_peft else {})
        )
    loadable_model_config(out / "config.json")
    save_tokenizer(tokenizer, out, recipe.model, chat_template)
    saved = {"kind": "adapter" if is_peft else "full", "path": str(out)}
    if recipe.output.merge:  # validated: only methods that merge get here
        saved["merged"] = str(merge_adapter(recipe, out, out / "merged"))
    return saved


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "processor_config.json",  # a vision-language model's processor: its image processor and settings
    "preprocessor_config.json",
)


def save_tokenizer(tokenizer, out: Path, spec: ModelSpec | Path, chat_template: str | None = None) -> None:
    """The tokenizer files of `spec`'s model (or of a dir: a run's own), copied unchanged; re-saved by
    transformers only where there are no files to copy. Then made loadable by transformers 4.x, and given the
    chat template the run trained with, if that is not the tokenizer's own."""
    if not copy_tokenizer_files(spec, out):
        tokenizer.save_pretrained(out)
    loadable_tokenizer_config(out / "tokenizer_config.json")
    if chat_template is not None:  # transformers (4.43+, 5) and vLLM read it before tokenizer_config's
        (out / "chat_template.jinja").write_text(chat_template)


def copy_tokenizer_files(spec: ModelSpec | Path, out: Path) -> bool:
    """Copy the tokenizer files of a local dir, a builtin or a (cached) hub model into `out`."""
    import shutil

    out.mkdir(parents=True, exist_ok=True)
    if isinstance(spec, Path):
        found = [spec / name for name in TOKENIZER_FILES if (spec / name).is_file()]
    else:  # a local dir, or a hub model already in the cache (the tokenizer just loaded from it)
        from huggingface_hub import try_to_load_from_cache

        source, found = model_source(spec), []
        for name in TOKENIZER_FILES:
            path = (
                Path(source) / name
                if Path(source).is_dir()
                else try_to_load_from_cache(source, name, revision=spec.revision)
            )
            if isinstance(path, (str, Path)) and Path(path).is_file():
                found.append(Path(path))
    if not any(f.name in ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt") for f in found):
        return False
    for file in found:
        shutil.copyfile(file, out / file.name)
    return True


def merge_adapter(recipe: Recipe, adapter_dir: Path, out: Path, dtype: str | None = None) -> Path:
    """Base (QLoRA: dequantized to the compute dtype) + adapter -> full weights loadable without peft, in `dtype`
    (a torch dtype name) or the compute dtype."""
    import peft

    from ftcli import report
    from ftcli.models.hardware import device_of
    from ftcli.models.load import load_base_model, load_tokenizer

    report.phase(f"merging the adapter into {recipe.model.name} on the {device_of(recipe)}")
    base = load_base_model(recipe, device=device_of(recipe))
    if METHODS[recipe.method.type].quantized:
        base = base.dequantize()
        if hasattr(base.config, "quantization_config"):
            del base.config.quantization_config
    model = peft.PeftModel.from_pretrained(base, str(adapter_dir))
    merged = model.merge_and_unload()
    _save_weights(merged, out, dtype)
    save_tokenizer(load_tokenizer(recipe.model), out, adapter_dir)  # the run's files, chat template included
    return out


def save_full(recipe: Recipe, run_dir: Path, out: Path, dtype: str | None = None) -> Path:
    """A full fine-tune's weights re-saved (in `dtype`), with the run's tokenizer files."""
    from ftcli import report
    from ftcli.models.hardware import device_of
    from ftcli.models.load import load_base_model, load_tokenizer

    report.phase(f"loading {run_dir} on the {device_of(recipe)}")
    _save_weights(load_base_model(recipe, device=device_of(recipe)), out, dtype)
    save_tokenizer(load_tokenizer(recipe.model), out, run_dir)
    return out


def _save_weights(model, out: Path, dtype: str | None) -> None:
    import torch

    if dtype is not None:
        model = model.to(getattr(torch, dtype))
        model.config.dtype = getattr(torch, dtype)
    inference_config(model)
    model.save_pretrained(out, safe_serialization=True)
    loadable_model_config(out / "config.json")
