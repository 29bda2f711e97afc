"""One declarative spec per task, method and data format, and the registry of each axis. Dispatch, validation,
inference, export and the data layer read these specs instead of branching on names: adding a task, a method or
a format is its own module plus one entry here (docs/architecture.md walks through each). A method's entry
includes its recipe keys (the `method:` block), which the schema gathers into one choice by `type`.

Pure data: the code a spec names ("module:function") is imported only when a run needs it (`load`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field

from ftcli.recipe.base import Strict

ALL_METHODS = ("full", "lora", "qlora", "prefix", "prompt")


@dataclass(frozen=True)
class FormatSpec:
    """A row layout of the data: the columns it reads (renamed with `columns:`), how its rows become canonical rows
    (`rows`: "module:function" taking (row, column name lookup)), how they are encoded (`encoding`: text = every
    token learned, documents split; completion = prompt then completion; chat = rendered with the chat template;
    pair = a preference pair), and whether rows carry an image."""

    name: str
    columns: tuple[str, ...]
    rows: str
    encoding: str
    images: bool = False

    @property
    def templated(self) -> bool:
        return self.encoding == "chat"


@dataclass(frozen=True)
class MethodSpec:
    """How a model is adapted: which weights train, what a run saves, whether it merges into full weights, what a
    continued adapter must be (`peft_type`, from its adapter_config.json), and the method's own rules."""

    name: str
    keys: type  # its `method:` block (a pydantic model whose `type` is the method's name)
    apply: str  # "module:function" (model, recipe, tokenizer_source) -> the model ready to train
    trains_base: bool = False  # full weights train (and are saved) rather than an adapter beside frozen ones
    peft_type: str | None = None  # LORA, PREFIX_TUNING, PROMPT_TUNING
    quantized: bool = False  # the base is loaded through bitsandbytes
    virtual_tokens: bool = False  # learned tokens in front of each row: no packing, nothing to merge
    checkpointing: bool = True  # gradient checkpointing can recompute it (a prefix lives in the KV cache: no)
    kv_cache: bool = False  # it writes into each layer's key/value cache (models without one cannot take it)
    evaluable: bool = True  # lm-eval scores it (prompt tuning shifts the logits by its virtual tokens: no)
    learning_rate: float = 2e-4  # the default for SFT; preference and reward tasks scale it (TaskSpec)

    @property
    def mergeable(self) -> bool:
        return not self.trains_base and not self.virtual_tokens


@dataclass(frozen=True)
class TaskSpec:
    """An objective: the command that runs it, the data it learns from, the module that trains it, the model it
    builds (`head`: causal_lm, score = a one-output sequence-classification head, git = the GIT vision-language
    model), what inference does with the result, and which optional recipe keys it reads."""

    name: str
    command: str  # train | align
    formats: tuple[str, ...]
    trainer: str  # "module:function" (recipe, overwrite, resume) -> summary
    head: str = "causal_lm"
    packs: bool = False  # its rows may be packed into max_length blocks
    prompts: bool = (
        False  # online RL: it learns from prompts (and reference answers), sampling its own completions
    )
    infer_modes: tuple[str, ...] = ("generate", "perplexity")  # the first is infer's default
    evaluable: bool = True  # lm-eval scores its models
    methods: tuple[str, ...] = ALL_METHODS
    align_keys: tuple[str, ...] = ()  # the `align:` keys it reads
    reference: bool = False  # it scores against a reference model (align.ref_model, full fine-tuning)
    multimodal: bool = False  # it reads the `multimodal:` block
    lr_scale: dict = field(
        default_factory=dict
    )  # method -> default learning rate, where not the method's own
    align_defaults: dict = field(default_factory=dict)  # `align:` key -> its default for this task
    check: str | None = None  # "module:function" (recipe): refusals that need its library, before the run dir

    @property
    def pairs(self) -> bool:
        return not self.prompts and all(FORMATS[f].encoding == "pair" for f in self.formats)


FORMATS: dict[str, FormatSpec] = {
    spec.name: spec
    for spec in (
        FormatSpec("text", ("text",), "ftcli.data.formats:text_row", "text"),
        FormatSpec(
            "instruction",
            ("instruction", "input", "output", "system"),
            "ftcli.data.formats:instruction_row",
            "chat",
        ),
        FormatSpec("chat", ("messages", "role", "content", "tools"), "ftcli.data.formats:chat_row", "chat"),
        FormatSpec("completion", ("prompt", "completion"), "ftcli.data.formats:completion_row", "completion"),
        FormatSpec(
            "preference",
            ("prompt", "chosen", "rejected", "margin"),
            "ftcli.data.formats:preference_row",
            "pair",
        ),
        FormatSpec(
            "caption", ("image", "caption"), "ftcli.data.formats:caption_row", "completion", images=True
        ),
        FormatSpec(
            "image_instruction",
            ("image", "instruction", "input", "output", "system"),
            "ftcli.data.formats:image_instruction_row",
            "chat",
            images=True,
        ),
        FormatSpec(
            "image_preference",
            ("image", "prompt", "chosen", "rejected"),
            "ftcli.data.formats:image_preference_row",
            "pair",
            images=True,
        ),
        FormatSpec(
            "image_chat",
            ("image", "messages", "role", "content"),
            "ftcli.data.formats:image_chat_row",
            "chat",
            images=True,
        ),
    )
}

# --- methods: each one's recipe keys and its spec -----------------------------------------------------------


class LoraFields(Strict):
    r: int = Field(8, gt=0, le=4096, description="LoRA rank")
    alpha: float = Field(16, gt=0, description="LoRA scaling numerator (scale = alpha / r)")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA path")
    target_modules: Literal["all-linear", "attention", "language-model"] | list[str] | None = Field(
        None,
        description="module name suffixes to adapt, all-linear (every linear layer but the head), attention "
        "(the attention's q/k/v projections) or language-model (every linear layer of a vision-language model's "
        "language model); default all-linear, attention for task caption (GIT-LLM's setting), language-model for "
        "task vlm",
    )
    bias: Literal["none", "all", "lora_only"] = "none"
    modules_to_save: list[str] = Field(
        default_factory=list, description="extra modules trained in full and saved"
    )
    use_dora: bool = Field(False, description="weight-decomposed LoRA (DoRA)")
    use_rslora: bool = Field(False, description="rank-stabilized scaling alpha/sqrt(r)")


class FullMethod(Strict):
    type: Literal["full"] = "full"
    keys_to_finetune: list[str] = Field(
        default_factory=list, description="train only parameters whose name contains one of these"
    )
    keys_to_freeze: list[str] = Field(
        default_factory=list, description="freeze parameters whose name contains one"
    )


class LoraMethod(LoraFields):
    type: Literal["lora"] = "lora"


class QLoraMethod(LoraFields):
    type: Literal["qlora"] = "qlora"
    bits: Literal[4, 8] = Field(4, description="4 = bitsandbytes 4-bit (nf4/fp4); 8 = LLM.int8")
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = Field(True, description="quantize the quantization constants too")
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="dtype of the dequantized matmuls; auto = bf16 where supported, else fp32"
    )


class PrefixMethod(Strict):
    type: Literal["prefix"] = "prefix"
    num_virtual_tokens: int = Field(
        20, gt=0, le=4096, description="prefix length (key/value vectors per layer)"
    )
    prefix_projection: bool = Field(
        False, description="reparametrize the prefix through an MLP (P-Tuning v2 style)"
    )
    encoder_hidden_size: int | None = Field(
        None, gt=0, description="hidden size of that MLP (prefix_projection); null = the model's hidden size"
    )


class PromptMethod(Strict):
    type: Literal["prompt"] = "prompt"
    num_virtual_tokens: int = Field(20, gt=0, le=4096, description="soft-prompt length")
    init_text: str | None = Field(None, description="initialize the soft prompt from this text's embeddings")


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            "full", FullMethod, "ftcli.models.methods:apply_full", trains_base=True, learning_rate=2e-5
        ),
        MethodSpec("lora", LoraMethod, "ftcli.models.methods:apply_lora", peft_type="LORA"),
        MethodSpec("qlora", QLoraMethod, "ftcli.models.methods:apply_lora", peft_type="LORA", quantized=True),
        MethodSpec(
            "prefix",
            PrefixMethod,
            "ftcli.models.methods:apply_prefix",
            peft_type="PREFIX_TUNING",
            virtual_tokens=True,
            checkpointing=False,
            kv_cache=True,
            learning_rate=3e-2,
        ),
        MethodSpec(
            "prompt",
            PromptMethod,
            "ftcli.models.methods:apply_prompt",
            peft_type="PROMPT_TUNING",
            virtual_tokens=True,
            evaluable=False,
            learning_rate=3e-2,
        ),
    )
}

# TRL's ORPO/CPO forward scores the labels against every logit, and prompt tuning's virtual tokens add logits.
NO_PROMPT_TUNING = ("full", "lora", "qlora", "prefix")
PREFERENCE_LR = {
    "full": 5e-7,
    "lora": 5e-6,
    "qlora": 5e-6,
    "prefix": 1e-3,
    "prompt": 1e-3,
}  # Zephyr/TRL-style steps
TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("pretrain", "train", ("text",), "ftcli.tasks.sft:run", packs=True),
        TaskSpec("sft", "train", ("chat", "instruction", "completion"), "ftcli.tasks.sft:run", packs=True),
        TaskSpec(
            "dpo",
            "align",
            ("preference",),
            "ftcli.tasks.dpo:run",
            reference=True,
            lr_scale=PREFERENCE_LR,
            infer_modes=("generate",),
            check="ftcli.tasks.dpo:check",
            align_keys=(
                "beta",
                "loss_type",
                "loss_weights",
                "label_smoothing",
                "ref_model",
                "precompute_ref_log_probs",
                "max_prompt_length",
                "max_completion_length",
            ),
        ),
        TaskSpec(
            "kto",
            "align",
            ("preference",),
            "ftcli.tasks.kto:run",
            reference=True,
            lr_scale=PREFERENCE_LR,
            infer_modes=("generate",),
            align_keys=(
                "beta",
                "ref_model",
                "precompute_ref_log_probs",
                "desirable_weight",
                "undesirable_weight",
                "max_prompt_length",
                "max_completion_length",
            ),
        ),
        TaskSpec(
            "orpo",
            "align",
            ("preference",),
            "ftcli.tasks.orpo:run",
            infer_modes=("generate",),
            methods=NO_PROMPT_TUNING,
            lr_scale={**PREFERENCE_LR, "full": 8e-6, "lora": 5e-5, "qlora": 5e-5},  # ORPO paper: 8e-6 full
            align_keys=("beta", "max_prompt_length", "max_completion_length"),
        ),
        TaskSpec(
            "cpo",
            "align",
            ("preference",),
            "ftcli.tasks.cpo:run",
            infer_modes=("generate",),
            methods=NO_PROMPT_TUNING,
            lr_scale={**PREFERENCE_LR, "lora": 1e-4, "qlora": 1e-4},  # CPO paper (ALMA-R): LoRA at 1e-4
            check="ftcli.tasks.cpo:check",
            align_keys=(
                "beta",
                "loss_type",
                "label_smoothing",
                "cpo_alpha",
                "max_prompt_length",
                "max_completion_length",
            ),
            align_defaults={"cpo_alpha": 1.0},
        ),
        TaskSpec(
            "simpo",
            "align",
            ("preference",),
            "ftcli.tasks.cpo:run",
            infer_modes=("generate",),
            methods=NO_PROMPT_TUNING,
            lr_scale={
                **PREFERENCE_LR,
                "full": 1e-6,
                "lora": 1e-5,
                "qlora": 1e-5,
            },  # SimPO paper: 3e-7..1e-6 full
            align_keys=("beta", "simpo_gamma", "cpo_alpha", "max_prompt_length", "max_completion_length"),
            align_defaults={"beta": 2.0, "cpo_alpha": 0.0},
        ),
        TaskSpec(
            "grpo",
            "align",
            ("chat", "instruction", "completion", "preference"),
            "ftcli.tasks.grpo:run",
            prompts=True,
            infer_modes=("generate",),
            methods=("full", "lora", "qlora"),  # TRL scores completions without virtual tokens
            lr_scale={"full": 1e-6, "lora": 1e-5, "qlora": 1e-5},  # TRL's GRPO default; adapters 10x
            check="ftcli.tasks.grpo:check",
            align_keys=(
                "beta",
                "loss_type",
                "num_generations",
                "temperature",
                "use_vllm",
                "rewards",
                "max_prompt_length",
                "max_completion_length",
            ),
            align_defaults={"beta": 0.0, "loss_type": "dapo"},  # TRL's: no KL term, no reference model
        ),
        TaskSpec(
            "reward",
            "align",
            ("preference",),
            "ftcli.tasks.reward:run",
            head="score",
            infer_modes=("score",),
            evaluable=False,
            align_keys=("center_rewards_coefficient", "max_prompt_length", "max_completion_length"),
            lr_scale={"full": 1e-5, "lora": 1e-4, "qlora": 1e-4, "prefix": 1e-3, "prompt": 1e-3},
        ),
        TaskSpec(
            "vlm",
            "train",
            ("image_chat", "image_instruction", "caption"),
            "ftcli.tasks.vlm:run",
            head="vlm",
            infer_modes=("generate",),
            evaluable=False,
            methods=("full", "lora", "qlora"),
        ),
        TaskSpec(
            "vlm_dpo",
            "align",
            ("image_preference",),
            "ftcli.tasks.dpo:run",
            head="vlm",
            reference=True,
            lr_scale=PREFERENCE_LR,
            infer_modes=("generate",),
            evaluable=False,
            methods=("full", "lora", "qlora"),
            check="ftcli.tasks.dpo:check",
            align_keys=(
                "beta",
                "loss_type",
                "loss_weights",
                "label_smoothing",
                "ref_model",
                "max_prompt_length",
                "max_completion_length",
            ),  # no precompute_ref_log_probs: TRL reads images per batch, never the whole set up front
        ),
        TaskSpec(
            "caption",
            "train",
            ("caption", "image_instruction", "image_chat"),
            "ftcli.tasks.caption:run",
            head="git",
            infer_modes=("generate",),
            evaluable=False,
            methods=("full", "lora", "qlora"),
            multimodal=True,
        ),
    )
}


def default_learning_rate(task: str, method: str) -> float:
    return TASKS[task].lr_scale.get(method, METHODS[method].learning_rate)


def load(reference: str):
    """The function a spec names as "package.module:function"."""
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)
