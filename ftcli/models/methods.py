"""Apply the recipe's adaptation method to a loaded base: full (with name-matched freezing), LoRA, QLoRA,
prefix or prompt tuning, all through peft where peft has it."""

from __future__ import annotations

from ftcli.errors import RecipeError
from ftcli.recipe.registry import METHODS, TASKS, load
from ftcli.recipe.schema import Recipe


def apply_method(model, recipe: Recipe, tokenizer_source: str | None = None):
    """Return the model ready to train (a PeftModel for adapter methods): a continued adapter, or the function
    the method's spec names (recipe/registry.py)."""
    if recipe.model.adapter:
        return _continue_adapter(model, recipe.model.adapter)
    return load(METHODS[recipe.method.type].apply)(model, recipe, tokenizer_source)


def apply_full(model, recipe: Recipe, tokenizer_source: str | None = None):
    freeze = list(recipe.method.keys_to_freeze)
    if TASKS[recipe.task].head == "vlm" and not recipe.method.keys_to_finetune:
        from ftcli.models.vlm import vision_tower_key

        tower = vision_tower_key(
            model
        )  # a pretrained vision tower stays frozen unless keys_to_finetune names it
        freeze += [tower] if tower else []
    select_trainable(model, recipe.method.keys_to_finetune, freeze)
    return model


def apply_lora(model, recipe: Recipe, tokenizer_source: str | None = None):
    """LoRA, on a full-precision base or (qlora) a bitsandbytes-quantized one. No peft.prepare_model_for_kbit_training:
    peft freezes the base, and non-reentrant checkpointing needs no input-grad hook. Its other step, every
    non-quantized weight (embeddings, head, norms) upcast to fp32, made the residual stream and every saved
    activation fp32: a QLoRA run then peaked above full fine-tuning (measured on an H200)."""
    import peft

    method = recipe.method
    modules_to_save = list(method.modules_to_save)
    if TASKS[recipe.task].head == "score" and "score" not in modules_to_save:
        modules_to_save.append(
            "score"
        )  # a reward model's score head is new: it trains in full, saved with the adapter
    config = peft.LoraConfig(
        task_type=_task_type(recipe),
        r=method.r,
        lora_alpha=method.alpha,
        lora_dropout=method.dropout,
        target_modules=_check_targets(model, method.target_modules),
        bias=method.bias,
        modules_to_save=modules_to_save or None,
        use_dora=method.use_dora,
        use_rslora=method.use_rslora,
    )
    return _peft(model, config, recipe)


def apply_prefix(model, recipe: Recipe, tokenizer_source: str | None = None):
    import peft

    method = recipe.method
    config = peft.PrefixTuningConfig(
        task_type=_task_type(recipe),
        num_virtual_tokens=method.num_virtual_tokens,
        prefix_projection=method.prefix_projection,
        encoder_hidden_size=method.encoder_hidden_size or model.config.hidden_size,
    )
    return _peft(model, config, recipe)


def apply_prompt(model, recipe: Recipe, tokenizer_source: str | None = None):
    import peft

    method = recipe.method
    init = {"prompt_tuning_init": "RANDOM"}
    if method.init_text:
        init = {
            "prompt_tuning_init": "TEXT",
            "prompt_tuning_init_text": method.init_text,
            "tokenizer_name_or_path": tokenizer_source,
        }
    config = peft.PromptTuningConfig(
        task_type=_task_type(recipe), num_virtual_tokens=method.num_virtual_tokens, **init
    )
    return _peft(model, config, recipe)


def _task_type(recipe: Recipe) -> str:
    return "SEQ_CLS" if TASKS[recipe.task].head == "score" else "CAUSAL_LM"


def _peft(model, config, recipe: Recipe):
    import peft

    try:
        return peft.get_peft_model(model, config)
    except (ValueError, TypeError, NotImplementedError) as exc:
        raise RecipeError(
            f"peft cannot apply {recipe.method.type} to this model: {exc}", key="method.type"
        ) from None


def select_trainable(model, keys_to_finetune: list[str], keys_to_freeze: list[str]) -> None:
    """Parameter-name substring matching, as in GIT-LLM's keys_finetune: train what matches, freeze the rest."""
    names = [n for n, _ in model.named_parameters()]
    for key_name, keys in (
        ("method.keys_to_finetune", keys_to_finetune),
        ("method.keys_to_freeze", keys_to_freeze),
    ):
        for key in keys:
            if not any(key in n for n in names):
                sample = ", ".join(names[:: max(1, len(names) // 6)][:6])
                raise RecipeError(f"{key!r} matches no parameter; names look like: {sample}", key=key_name)
    for name, param in model.named_parameters():
        train = not keys_to_finetune or any(k in name for k in keys_to_finetune)
        if any(k in name for k in keys_to_freeze):
            train = False
        param.requires_grad_(train)


ATTENTION_QKV = ("q_proj", "k_proj", "v_proj", "query_key_value", "Wqkv", "c_attn", "qkv_proj", "qkv")


def attention_targets(module_names) -> list[str]:
    """The attention input projections (q/k/v, or their fused form) among a model's linear layer names."""
    return [name for name in ATTENTION_QKV if name in set(module_names)]


def _check_targets(model, targets):
    """Seed 001's BERT q_lin/v_lin failure: catch LoRA targets that name no module before training."""
    if targets == "all-linear":
        return targets
    if targets == "language-model":
        from ftcli.models.vlm import language_model_targets

        return language_model_targets(model)
    import torch

    linear = sorted(
        {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    )
    if targets == "attention":
        found = attention_targets(linear)
        if not found:
            raise RecipeError(
                f"no attention q/k/v projection found; name the layers to adapt (its linear layers are "
                f"{', '.join(linear)})",
                key="method.target_modules",
            )
        return found
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n, _ in model.named_modules())]
    if missing:
        raise RecipeError(
            f"{missing[0]!r} names no module of this model; its linear layers are {', '.join(linear)}",
            key="method.target_modules",
        )
    return targets


def _continue_adapter(model, adapter: str):
    import peft

    try:
        return peft.PeftModel.from_pretrained(model, adapter, is_trainable=True)
    except (OSError, ValueError, RuntimeError) as exc:
        text = str(exc).splitlines()[0]
        raise RecipeError(
            f"cannot load adapter {adapter} onto this base: {text}", key="model.adapter"
        ) from None


def parameter_counts(model) -> tuple[int, int]:
    """(total, trainable) parameter counts; 4-bit weights count as their logical (unpacked) size."""
    total = trainable = 0
    for param in model.parameters():
        n = logical_numel(param)
        total += n
        if param.requires_grad:
            trainable += n
    return total, trainable


def logical_numel(param) -> int:
    quant_state = getattr(param, "quant_state", None)  # bitsandbytes 4-bit weights are stored packed
    return quant_state.shape.numel() if quant_state is not None else param.numel()
