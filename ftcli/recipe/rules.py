"""The rules a whole recipe follows, read from the task, method and format specs (recipe/registry.py): which
combinations work, which keys the chosen task, method and formats read (a key set to anything but its default
that nothing reads is an error naming it), and every default that depends on other keys, resolved here so that
what `validate` prints and the run freezes is exactly what runs.

Errors are ValueErrors whose message starts with the dotted key; the loader turns them into RecipeErrors that
name the file and YAML line.
"""

from __future__ import annotations

import re

from ftcli.recipe.registry import FORMATS, METHODS, TASKS, default_learning_rate

# Keys that shape a new adapter; continuing model.adapter keeps the adapter's own.
ADAPTER_SHAPE = (
    "r",
    "alpha",
    "dropout",
    "target_modules",
    "bias",
    "modules_to_save",
    "use_dora",
    "use_rslora",
    "num_virtual_tokens",
    "prefix_projection",
    "encoder_hidden_size",
    "init_text",
)


def apply(recipe) -> None:
    task, method = TASKS[recipe.task], METHODS[recipe.method.type]
    sources = [*recipe.data.sources, *recipe.data.eval_sources]
    formats = {FORMATS[src.format or recipe.data.format] for src in sources}
    _check_formats(recipe, task, formats)
    _check_method(recipe, task, method)
    _refuse_unread(recipe, task, method, formats)
    _resolve(recipe, task, method)


def changed(section, name: str) -> bool:
    """The key holds something other than its default (set by the user, or resolved)."""
    field = type(section).model_fields[name]
    return getattr(section, name) != field.get_default(call_default_factory=True)


def _check_formats(recipe, task, formats) -> None:
    for fmt in sorted(formats, key=lambda f: f.name):
        if fmt.name not in task.formats:
            images = [t for t, spec in TASKS.items() if fmt.name in spec.formats]
            hint = f"; {fmt.name} rows train with task: {' or '.join(images)}" if images else ""
            raise ValueError(
                f"data.format: task {task.name} cannot learn from {fmt.name} rows (it takes "
                f"{', '.join(task.formats)}){hint}"
            )
    if recipe.data.eval_sources and recipe.data.eval_fraction:
        raise ValueError("data.eval_fraction: set either eval_fraction or eval_sources, not both")


def _check_method(recipe, task, method) -> None:
    kind = method.name
    if kind not in task.methods:
        raise ValueError(f"method.type: task {task.name} trains with {', '.join(task.methods)}, not {kind}")
    if task.multimodal and recipe.multimodal is None:
        raise ValueError(
            f"multimodal.vision_model: task {task.name} needs a vision encoder, e.g. "
            "multimodal: {vision_model: openai/clip-vit-base-patch16}"
        )
    if recipe.multimodal is not None and not task.multimodal:
        raise ValueError(
            f"multimodal: task {task.name} does not read it; set task: caption or remove the block"
        )
    if task.head == "git":
        if method.trains_base and (recipe.method.keys_to_finetune or recipe.method.keys_to_freeze):
            raise ValueError(
                "method.keys_to_finetune: for task caption the parts are chosen by "
                "multimodal.keys_to_finetune / keys_to_freeze"
            )
        if (recipe.model.attn_implementation or "").startswith("flash"):
            raise ValueError(
                "model.attn_implementation: the GIT mask is a custom 4D mask, which flash attention "
                "cannot take; use sdpa or eager"
            )
    if recipe.data.packing:
        if method.virtual_tokens:
            raise ValueError(
                f"data.packing: {kind} tuning prepends virtual tokens to each row, so packed rows would "
                "share one prefix; set data.packing: false"
            )
        if not task.packs:
            why = "preference pairs are scored whole" if task.pairs else "each row carries its own image"
            raise ValueError(f"data.packing: task {task.name} does not pack its rows ({why})")
    if not method.checkpointing and recipe.training.gradient_checkpointing is True:
        raise ValueError(
            f"training.gradient_checkpointing: peft's {kind} tuning keeps what it learns in the "
            "key/value cache, which gradient checkpointing cannot recompute; set it to false (auto "
            "already does)"
        )
    if (
        recipe.training.precision == "fp16"
        and method.quantized
        and getattr(recipe.method, "compute_dtype", "") == "bfloat16"
    ):
        raise ValueError("training.precision: fp16 autocast with bf16 QLoRA compute mixes dtypes; use bf16")
    if recipe.align.ref_model and not (task.reference and method.trains_base):
        raise ValueError(
            "align.ref_model: an explicit reference model is for full fine-tuning with "
            f"{' or '.join(t for t, s in TASKS.items() if s.reference)}; adapters use the starting model "
            "with the adapter disabled, and other tasks need none"
        )
    if recipe.output.merge and (task.head == "git" or not method.mergeable):
        why = (
            "a caption run is rebuilt from its two base checkpoints; there is no single merged model to write"
            if task.head == "git"
            else "a full fine-tune holds full weights already"
            if method.trains_base
            else f"{kind} tuning adds virtual tokens at run time; there are no weights to merge it into"
        )
        raise ValueError(f"output.merge: {why}")
    if recipe.model.adapter and method.trains_base:
        raise ValueError(
            "model.adapter: continuing an adapter trains that adapter; set method to its kind "
            "(lora, qlora, prefix or prompt), or put a merged model in model.name for full fine-tuning"
        )


def _check_groups(recipe) -> None:
    """Online RL samples align.num_generations completions per prompt, and a batch holds whole groups."""
    align, training = recipe.align, recipe.training
    if not align.rewards:
        raise ValueError(
            "align.rewards: GRPO needs at least one reward, e.g. rewards: [{type: match}] (the answer must equal "
            "the data's), {type: regex, pattern: ...}, {type: model, path: <reward run>}, {type: python, ...}"
        )
    if training.batch_size % align.num_generations:
        raise ValueError(
            f"training.batch_size: {training.batch_size} completions per batch is no whole number of groups of "
            f"align.num_generations ({align.num_generations}); use a multiple of it"
        )
    if not any(r.weight for r in align.rewards):
        raise ValueError("align.rewards: every weight is 0; nothing would be learned")
    for i, reward in enumerate(align.rewards):
        pattern = getattr(reward, "pattern", None)
        try:
            re.compile(pattern or "")
        except re.error as exc:
            raise ValueError(f"align.rewards.{i}.pattern: not a valid regex ({exc})") from None


def _refuse_unread(recipe, task, method, formats) -> None:
    """A key set to anything but its default that the chosen task, method and formats would not read."""
    unread: list[tuple[str, str]] = []
    readers = {
        key: [t for t, spec in TASKS.items() if key in spec.align_keys]
        for key in type(recipe.align).model_fields
    }
    for key, tasks in readers.items():
        if key not in task.align_keys and changed(recipe.align, key):
            unread.append(
                (
                    f"align.{key}",
                    f"task {task.name} does not read it"
                    + (f" (it is for {', '.join(tasks)})" if tasks else ""),
                )
            )
    encodings = {f.encoding for f in formats}
    data = recipe.data
    if changed(data, "train_on") and task.prompts:
        unread.append(("data.train_on", f"task {task.name} learns from the completions it samples"))
    elif changed(data, "train_on") and not encodings & {"chat", "completion"}:
        unread.append(
            ("data.train_on", f"{', '.join(sorted(f.name for f in formats))} rows choose their own labels")
        )
    if changed(data, "template") and not encodings & {"chat", "pair"}:
        unread.append(
            ("data.template", f"{', '.join(sorted(f.name for f in formats))} rows use no chat template")
        )
    if changed(data, "overlong") and encodings == {"text"}:
        unread.append(
            ("data.overlong", "text documents are split into max_length pieces, never cut or dropped")
        )
    if not any(f.images for f in formats):
        if changed(data, "allow_images_outside"):
            unread.append(("data.allow_images_outside", "these rows have no images"))
        for group in ("sources", "eval_sources"):
            for i, src in enumerate(getattr(data, group)):
                if src.image_dir is not None:
                    unread.append((f"data.{group}.{i}.image_dir", "these rows have no images"))
    spec = recipe.method
    if task.head == "git" and getattr(spec, "modules_to_save", None):
        unread.append(
            (
                "method.modules_to_save",
                "a caption run chooses the parts it trains with multimodal.keys_to_finetune",
            )
        )
    if recipe.model.adapter and task.head != "git":  # a caption run's LoRA layout is rebuilt from this recipe
        for key in ADAPTER_SHAPE:
            if key in type(spec).model_fields and changed(spec, key):
                unread.append((f"method.{key}", f"continuing model.adapter keeps that adapter's own {key}"))
    if method.quantized and spec.bits == 8:
        for key in ("quant_type", "double_quant", "compute_dtype"):
            if changed(spec, key):
                unread.append((f"method.{key}", "8-bit quantization (method.bits: 8) has no such setting"))
    if getattr(spec, "encoder_hidden_size", None) is not None and not spec.prefix_projection:
        unread.append(("method.encoder_hidden_size", "it sizes the MLP of prefix_projection: true"))
    # a builtin is built in code; model.allow_pickle still governs the weights of a model.adapter on it
    pickle = () if recipe.model.adapter else ("allow_pickle",)
    builtin_parts = [("model", recipe.model.name, ("revision", "trust_remote_code", *pickle))]
    if recipe.multimodal:
        builtin_parts.append(("multimodal", recipe.multimodal.vision_model, ("vision_revision",)))
    for block, name, keys in builtin_parts:
        for key in keys:
            if name.startswith("builtin:") and changed(getattr(recipe, block), key):
                unread.append((f"{block}.{key}", f"{name} is built in code: it has no hub revision or files"))
    training = recipe.training
    if changed(training, "warmup_steps") and changed(training, "warmup_ratio"):
        unread.append(
            ("training.warmup_steps", "training.warmup_ratio is set too, and wins; set one of them")
        )
    if training.eval_steps is not None and not (data.eval_sources or data.eval_fraction):
        unread.append(
            ("training.eval_steps", "there is no eval data (data.eval_fraction or data.eval_sources)")
        )
    if changed(training, "save_total_limit") and training.save_steps is None:
        unread.append(("training.save_total_limit", "no checkpoints are saved without training.save_steps"))
    launch = recipe.launch
    for section, strategy in (("deepspeed", "deepspeed"), ("fsdp", "fsdp")):
        block = getattr(launch, section)
        for key in type(block).model_fields:
            if changed(block, key) and (launch.strategy != strategy or launch.config_file):
                why = (
                    "launch.config_file is used instead"
                    if launch.config_file
                    else f"launch.strategy is {launch.strategy}"
                )
                unread.append((f"launch.{section}.{key}", why))
    if launch.deepspeed.config_file:
        for key in ("zero_stage", "offload_optimizer", "offload_params"):
            if changed(launch.deepspeed, key):
                unread.append((f"launch.deepspeed.{key}", "launch.deepspeed.config_file is used instead"))
    if launch.main_process_ip and launch.num_machines == 1:
        unread.append(("launch.main_process_ip", "one machine needs no address (launch.num_machines is 1)"))
    if unread:
        key, why = unread[0]
        raise ValueError(f"{key}: not read here: {why}; remove it")


def _resolve(recipe, task, method) -> None:
    """Every default that depends on other keys, filled in."""
    training, data, align = recipe.training, recipe.data, recipe.align
    if training.learning_rate is None:
        training.learning_rate = default_learning_rate(task.name, method.name)
    if data.packing is None:
        data.packing = task.packs and not method.virtual_tokens
    defaults = {"beta": 0.1, "loss_type": "sigmoid", **task.align_defaults}
    for key, value in defaults.items():
        if key in task.align_keys and getattr(align, key) is None:
            setattr(align, key, value)
    if align.beta == 0 and defaults["beta"] != 0:
        raise ValueError(f"align.beta: task {task.name} needs beta > 0")
    text_only = all(
        FORMATS[s.format or data.format].encoding == "text" for s in [*data.sources, *data.eval_sources]
    )
    if data.overlong is None and not text_only:  # (text documents are split, never cut: the key stays unset)
        data.overlong = "drop" if task.prompts else "truncate"
    elif task.prompts and data.overlong == "truncate":
        raise ValueError(
            f"data.overlong: task {task.name} drops prompts over align.max_prompt_length (a prompt cut short "
            "asks another question); remove it"
        )
    if task.prompts:
        _check_groups(recipe)
    if "max_prompt_length" in task.align_keys and align.max_prompt_length is None:
        align.max_prompt_length = data.max_length // 2
    if "max_completion_length" in task.align_keys and align.max_completion_length is None:
        # sampled completions (grpo): a fixed generation budget, what the prompt leaves of max_length; pairs: a cap
        # within what each pair's own prompt leaves
        align.max_completion_length = data.max_length - (align.max_prompt_length if task.prompts else 0)
        if align.max_completion_length < 1:
            raise ValueError(
                f"align.max_prompt_length: {align.max_prompt_length} leaves no room for completions in "
                f"data.max_length {data.max_length}; lower it or set align.max_completion_length"
            )
    continued_peft = recipe.model.adapter and task.head != "git"  # a peft adapter keeps its own targets
    if method.peft_type == "LORA" and recipe.method.target_modules is None and not continued_peft:
        recipe.method.target_modules = {"git": "attention", "vlm": "language-model"}.get(
            task.head, "all-linear"
        )
    if recipe.infer.mode is None:
        recipe.infer.mode = task.infer_modes[0]
    elif recipe.infer.mode not in task.infer_modes:
        raise ValueError(
            f"infer.mode: a {task.name} model does {' or '.join(task.infer_modes)}, not {recipe.infer.mode}"
        )
