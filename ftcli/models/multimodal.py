"""A recipe's GIT model (`task: caption`): the vision encoder and the causal LM (4-bit for QLoRA) joined by a new
projection, LoRA where the method asks for it, the trainable parts chosen by parameter name, and the run's
trained tensors saved and reloaded by name.

A run dir holds only what training changed (`model.safetensors`: projection, adapters, any part trained in
full), `git_config.json` naming the two checkpoints it builds on, the tokenizer and the image processor; the
frozen recipe rebuilds the rest, so a 7B LM is never copied into every run.
"""

from __future__ import annotations

import json
from pathlib import Path

from ftcli.errors import RecipeError
from ftcli.models.builtin import builtin_path, is_builtin
from ftcli.models.hardware import compute_dtype
from ftcli.models.load import load_base_model, load_tokenizer
from ftcli.models.methods import attention_targets, logical_numel
from ftcli.recipe.registry import METHODS
from ftcli.recipe.schema import Recipe

TRAINED, GIT_CONFIG = "model.safetensors", "git_config.json"
PARTS = ("vision", "projection", "lm", "head", "adapters")


def build_git(recipe: Recipe, for_training: bool = True):
    """(GitLLM, image processor) with the method applied; for inference the trainable layout is rebuilt the
    same way so a run's saved tensors load by name, and the whole model is put on the recipe's device."""
    from ftcli.models.git import GitLLM
    from ftcli.models.hardware import device_of

    vision, processor = load_vision(recipe)
    lm = load_base_model(recipe)
    model = GitLLM(vision, lm)  # the projection is created here, from the seed set before
    model.projection.to(compute_dtype(recipe))
    _apply_lora(model, recipe)
    _select_trainable(model, recipe)
    if recipe.model.adapter:  # continue from an earlier GIT run (e.g. stage 1 projection -> stage 2 LoRA)
        # what that run trained is part of this one's model even where this run freezes it: saved again with
        # this run's own tensors, so its run dir (and every checkpoint) rebuilds the model alone
        model.carried = load_trained(model, Path(recipe.model.adapter), key="model.adapter")
    if not for_training:
        model.requires_grad_(False)
        _to_device(model, device_of(recipe))
    return model, processor


def _to_device(model, device: str) -> None:
    """A 4-bit LM was placed by bitsandbytes when it loaded; the rest follows it there."""
    quantized = getattr(model.lm, "is_loaded_in_4bit", False) or getattr(model.lm, "is_loaded_in_8bit", False)
    if quantized:
        model.vision.to(device)
        model.projection.to(device)
    else:
        model.to(device)


def load_vision(recipe: Recipe):
    """The vision tower of `multimodal.vision_model` (a whole CLIP/SigLIP checkpoint is fine: its vision part is
    taken) and its image processor. The Pillow processors are used on purpose: they need no torchvision."""
    import transformers

    from ftcli.upstream import vision_model_class

    spec = recipe.multimodal
    source = str(builtin_path(spec.vision_model)) if is_builtin(spec.vision_model) else spec.vision_model
    common = {"revision": spec.vision_revision, "trust_remote_code": recipe.model.trust_remote_code}
    try:
        config = transformers.AutoConfig.from_pretrained(source, **common)
        vision_type = getattr(config, "vision_config", config).model_type
        cls = vision_model_class(vision_type)
        if cls is None:
            raise RecipeError(
                f"{spec.vision_model} is a {config.model_type} model, not a vision encoder "
                "(e.g. openai/clip-vit-base-patch16)",
                key="multimodal.vision_model",
            )
        pickle = None if recipe.model.allow_pickle else True  # as for the LM: safetensors only unless allowed
        vision = cls.from_pretrained(source, dtype=compute_dtype(recipe), use_safetensors=pickle, **common)
        # from its module: transformers 5.17's top-level AutoImageProcessor demands torchvision even for Pillow
        from transformers.models.auto.image_processing_auto import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(source, backend="pil", **common)
    except (OSError, ValueError) as exc:
        raise RecipeError(
            f"cannot load {spec.vision_model}: {str(exc).splitlines()[0]}", key="multimodal.vision_model"
        ) from None
    if not hasattr(vision.config, "hidden_size"):
        raise RecipeError(
            f"{spec.vision_model}: its config has no hidden_size to project from",
            key="multimodal.vision_model",
        )
    return vision, processor


def _apply_lora(model, recipe: Recipe) -> None:
    """LoRA on the LM (and with vision_lora the vision tower's q/k/v). Adapters are cast to fp32 with the rest of
    what trains (models/hardware.cast_trained); a QLoRA LM keeps its non-quantized weights in the compute dtype."""
    method = recipe.method
    if METHODS[method.type].peft_type != "LORA":
        return
    import peft

    patterns = [_target_pattern("lm", model.lm, method.target_modules)]
    if recipe.multimodal.vision_lora:
        patterns.append(_target_pattern("vision", model.vision, "attention"))
    config = peft.LoraConfig(
        r=method.r,
        lora_alpha=method.alpha,
        lora_dropout=method.dropout,
        target_modules="|".join(f"({p})" for p in patterns),  # a regex over full module names
        bias=method.bias,
        use_dora=method.use_dora,
        use_rslora=method.use_rslora,
    )
    peft.inject_adapter_in_model(config, model)


def _target_pattern(prefix: str, part, wanted) -> str:
    """A regex for the modules of one part (lm or vision) that LoRA adapts: `attention` = its q/k/v (the GIT-LLM
    setting, the default for caption runs), `all-linear` = every linear layer but the head, or named layers."""
    import re

    import torch

    head = part.get_output_embeddings() if hasattr(part, "get_output_embeddings") else None
    from transformers.pytorch_utils import Conv1D

    # bitsandbytes' Linear4bit / Linear8bitLt are nn.Linear subclasses (a QLoRA LM is covered); GPT-2 uses Conv1D
    kinds = (torch.nn.Linear, Conv1D)
    linear = {n.rsplit(".", 1)[-1] for n, m in part.named_modules() if isinstance(m, kinds) and m is not head}
    if isinstance(wanted, list):
        targets = wanted
        missing = [t for t in targets if t not in linear]
        if missing:
            raise RecipeError(
                f"{missing[0]!r} names no linear layer of the LM; it has {', '.join(sorted(linear))}",
                key="method.target_modules",
            )
    elif wanted == "all-linear" and linear:
        targets = sorted(linear)
    elif wanted == "all-linear":
        raise RecipeError(f"the {prefix} model has no linear layer for LoRA", key="method.target_modules")
    else:
        targets = attention_targets(linear)
        if not targets:
            key = "method.target_modules" if prefix == "lm" else "multimodal.vision_lora"
            raise RecipeError(
                f"no attention q/k/v projection found in the {prefix} model; name the layers to "
                f"adapt (it has {', '.join(sorted(linear))})",
                key=key,
            )
    return rf"{prefix}\..*\.({'|'.join(re.escape(t) for t in targets)})"


def _select_trainable(model, recipe: Recipe) -> None:
    """The projection always trains (it starts random), LoRA weights train, and so does every parameter whose
    name contains one of `multimodal.keys_to_finetune` — unless it contains one of `keys_to_freeze`."""
    spec = recipe.multimodal
    names = [
        n for n, _ in model.named_parameters(remove_duplicate=False)
    ]  # tied weights answer to both names
    for key_name, keys in (
        ("multimodal.keys_to_finetune", spec.keys_to_finetune),
        ("multimodal.keys_to_freeze", spec.keys_to_freeze),
    ):
        for key in keys:
            if not any(key in n for n in names):
                sample = ", ".join(sorted({".".join(n.split(".")[:2]) for n in names}))
                raise RecipeError(f"{key!r} matches no parameter; names start like: {sample}", key=key_name)
    quantized = METHODS[recipe.method.type].quantized
    for name, param in model.named_parameters(remove_duplicate=False):
        train = name.startswith("projection.") or "lora_" in name
        train = train or any(k in name for k in spec.keys_to_finetune)
        if any(k in name for k in spec.keys_to_freeze) and "lora_" not in name:
            if name.startswith("projection."):
                raise RecipeError(
                    "the projection starts random and always trains; do not freeze it",
                    key="multimodal.keys_to_freeze",
                )
            train = False
        if (
            train
            and quantized
            and name.startswith("lm.")
            and "lora_" not in name
            and not param.is_floating_point()
        ):
            raise RecipeError(
                f"{name} is 4-bit (qlora); train the LM through LoRA, or use method lora",
                key="multimodal.keys_to_finetune",
            )
        if train:
            param.requires_grad_(True)
        elif param.requires_grad:
            param.requires_grad_(False)


def part_counts(model) -> dict[str, tuple[int, int]]:
    """{part: (parameters, trainable)} for vision, projection, lm, head (tied heads count here) and adapters."""
    head = model.lm.get_output_embeddings()
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    counts = {part: [0, 0] for part in PARTS}
    for name, param in model.named_parameters():
        part = "adapters" if "lora_" in name else "head" if id(param) in head_ids else name.split(".", 1)[0]
        counts[part][0] += logical_numel(param)
        counts[part][1] += logical_numel(param) if param.requires_grad else 0
    return {part: (total, trainable) for part, (total, trainable) in counts.items() if total}


def save_trained(model, out: Path) -> list[str]:
    """The trained tensors (by parameter name), and those carried from the run it continued, as safetensors;
    returns their names."""
    from safetensors.torch import save_file

    carried = set(getattr(model, "carried", ()))
    tensors = {
        n: p.detach().cpu().contiguous()
        for n, p in model.named_parameters()
        if p.requires_grad or n in carried
    }
    save_file(tensors, str(out / TRAINED), metadata={"format": "pt"})
    return sorted(tensors)


def load_trained(model, run: Path, key: str = "model.adapter") -> list[str]:
    """Load a GIT run's trained tensors into a model built from the same recipe, and return their names; every
    tensor must find its parameter with the same shape (a different LM, vision model or LoRA layout is an error,
    not a silent skip)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = run / TRAINED
    if not file.is_file():
        raise RecipeError(
            f"{run} has no {TRAINED}: not a finished caption run (see its summary.json)", key=key
        )
    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError) as exc:
        raise RecipeError(f"cannot read {file}: {exc}", key=key) from None
    params = dict(model.named_parameters(remove_duplicate=False))
    for name, tensor in tensors.items():
        if name not in params or params[name].shape != tensor.shape:
            raise RecipeError(
                f"{file} does not fit this model ({name} "
                f"{'is missing' if name not in params else 'has another shape'}); it was trained "
                "with another LM, vision model or LoRA setting",
                key=key,
            )
    model.load_state_dict(tensors, strict=False)
    return sorted(tensors)


def save_git_outputs(
    model, tokenizer, processor, recipe: Recipe, out: Path, counts: dict, chat_template: str | None = None
) -> dict:
    """The run dir of a caption run: trained tensors, git_config.json, tokenizer and image processor."""
    from ftcli.models.save import save_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    names = save_trained(model, out)
    config = {
        "architecture": "ftcli-git",
        "vision_model": recipe.multimodal.vision_model,
        "language_model": recipe.model.name,
        "image_tokens": image_token_count(model),
        "projection": [model.projection[0].in_features, model.projection[0].out_features],
        "mask_form": model.mask_form,
        "method": recipe.method.type,
        "trained_parts": {part: trainable for part, (_, trainable) in counts.items() if trainable},
        "trained_tensors": len(names),
    }
    (out / GIT_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    save_tokenizer(tokenizer, out, recipe.model, chat_template)
    processor.save_pretrained(out)
    return {"kind": "git", "path": str(out), "tensors": len(names)}


def load_git_for_inference(recipe: Recipe):
    """(model, tokenizer, image processor) of the caption run dir in `model.adapter`, rebuilt from its frozen
    recipe: both base checkpoints, the LoRA layout, then the run's trained tensors."""
    from ftcli import report
    from ftcli.models.hardware import device_of
    from ftcli.models.load import inference_config

    run = Path(recipe.model.adapter)
    own = (run / "tokenizer_config.json").exists()
    tokenizer = load_tokenizer(recipe.model, source=str(run) if own else None)
    report.phase(
        f"loading {recipe.multimodal.vision_model} + {recipe.model.name} + {run} on the {device_of(recipe)}"
    )
    model, processor = build_git(recipe, for_training=False)
    model.eval()
    inference_config(model)
    return model, tokenizer, processor


def image_token_count(model) -> int:
    """The image tokens in front of the text: one per patch, plus the class token of encoders that have one (CLIP's
    class_embedding, ViT's and DINOv2's cls_token; SigLIP has none) and any register tokens (DINOv2)."""
    config = model.vision.config
    size, patch = getattr(config, "image_size", None), getattr(config, "patch_size", None)
    if not (size and patch):
        return -1
    extra = 0
    for name, param in model.vision.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        extra += (
            1
            if leaf in ("class_embedding", "cls_token")
            else param.shape[1]
            if leaf == "register_tokens"
            else 0
        )
    return (size // patch) ** 2 + extra
