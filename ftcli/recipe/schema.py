"""The recipe schema: one pydantic model for every command. Pure data and validation, no heavy imports.

Every model forbids unknown keys, so a misspelt key is an error (with a did-you-mean), never silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, PrivateAttr, model_validator

from ftcli.recipe.base import Strict
from ftcli.recipe.registry import FORMATS, METHODS, TASKS

Task = Literal[tuple(TASKS)]  # type: ignore[valid-type]
Format = Literal[tuple(FORMATS)]  # type: ignore[valid-type]

OPTIMIZERS = (
    "adamw_torch",
    "adamw_torch_fused",
    "adafactor",
    "sgd",
    "adagrad",
    "rmsprop",
    "adamw_8bit",
    "adamw_bnb_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
    "lion_8bit",
    "lion_32bit",
    "paged_lion_8bit",
    "paged_lion_32bit",
)
BNB_OPTIMIZERS = tuple(o for o in OPTIMIZERS if "8bit" in o or "32bit" in o)
REPORTERS = ("none", "tensorboard", "wandb", "mlflow", "trackio")


class ModelSpec(Strict):
    """The base model and how to load it."""

    name: str = Field(description="hub id, local dir, run dir, or builtin:NAME (tiny models made in code)")
    revision: str | None = Field(None, description="hub branch, tag or commit")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="compute dtype (frozen weights, 16-bit autocast); auto = training.precision's, else bf16 "
        "on GPUs that have it, else fp32. Trained weights stay fp32 unless a full fine-tune names a 16-bit dtype here",
    )
    trust_remote_code: bool = Field(
        False, description="run the model repo's own Python code (off by default)"
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flash_attention_3"] | None = Field(
        None, description="attention kernel; None = transformers' default (sdpa)"
    )
    adapter: str | None = Field(None, description="a PEFT adapter (or run dir) to load and continue training")
    allow_pickle: bool = Field(
        False,
        description="load .bin/.pt (pickle) weights; pickle can run code — only for checkpoints you trust",
    )


# The keys of each method live with its spec in recipe/registry.py; the union of them is the `method:` block.
Method = Annotated[Union[tuple(spec.keys for spec in METHODS.values())], Field(discriminator="type")]  # noqa: UP007
FullMethod = METHODS["full"].keys


class DataSource(Strict):
    """One dataset: a local file or folder, or a hub dataset id."""

    path: str = Field(
        description=".jsonl/.json/.csv/.parquet/.arrow/.txt file, a folder of them, or a hub dataset id"
    )
    format: Format | None = Field(None, description="defaults to data.format")
    columns: dict[str, str] | None = Field(None, description="defaults to data.columns")
    split: str = Field("train", description="hub dataset split")
    name: str | None = Field(None, description="hub dataset config name")
    revision: str | None = Field(None, description="hub dataset revision")
    max_samples: int | None = Field(None, gt=0, description="take at most this many rows (after shuffling)")
    weight: float | None = Field(
        None, gt=0, le=1000, description="row multiplier when mixing: 0.5 = half, 2 = twice"
    )
    image_dir: str | None = Field(
        None,
        description="image formats: folder image paths are relative to (and "
        "confined to); default the data file's folder",
    )

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value


class DataSpec(Strict):
    format: Format = Field("chat", description=f"row layout: {', '.join(FORMATS)}")
    columns: dict[str, str] = Field(
        default_factory=dict, description="map ftcli's column names to the dataset's"
    )
    sources: list[DataSource] = Field(min_length=1)
    eval_sources: list[DataSource] = Field(default_factory=list, description="held-out data")
    eval_fraction: float = Field(0.0, ge=0, lt=1, description="hold out this fraction of the sources instead")
    template: str | None = Field(
        None,
        description="None = the tokenizer's chat template; a name (chatml, alpaca, llama2) or inline Jinja",
    )
    train_on: Literal["completion", "all"] = Field("completion", description="which tokens carry the loss")
    max_length: int = Field(1024, ge=8, le=2**20, description="tokens per row (per packed row when packing)")
    overlong: Literal["truncate", "drop"] | None = Field(
        None,
        description="what to do with rows over max_length; default truncate (grpo: drop, a prompt cut short asks "
        "another question)",
    )
    on_bad_rows: Literal["error", "skip"] = Field(
        "error",
        description="error (stop, naming file and row) or skip "
        "(and count) bad rows, missing or unreadable images included",
    )
    allow_images_outside: bool = Field(
        False, description="let image paths leave their source's image_dir (absolute paths, ..)"
    )
    packing: bool | None = Field(
        None,
        description="pack rows into max_length blocks without cross-row attention; default on where the task "
        "and method allow it (sft, pretrain; not prefix/prompt tuning)",
    )
    shuffle: bool = Field(True, description="shuffle each source (seeded) before sampling")
    seed: int = Field(42, ge=0, lt=2**32, description="seed of shuffling, sampling and the eval split")
    num_proc: int | None = Field(None, gt=0, le=1024, description="tokenization worker processes")
    cache_dir: str | None = Field(
        None, description="where prepared data is cached; default ~/.cache/ftcli/data"
    )

    @model_validator(mode="after")
    def _check_columns(self) -> DataSpec:
        for where, src in [("data", None)] + [(f"data.sources.{i}", s) for i, s in enumerate(self.sources)]:
            fmt = src.format if src and src.format else self.format
            cols = (src.columns if src else self.columns) or {}
            unknown = [k for k in cols if k not in FORMATS[fmt].columns]
            if unknown:
                raise ValueError(
                    f"{where}.columns.{unknown[0]}: not a column of the {fmt} format "
                    f"(it has {', '.join(FORMATS[fmt].columns)})"
                )
        return self


class TrainingSpec(Strict):
    epochs: float = Field(1.0, gt=0, le=1e6, description="passes over the training data")
    max_steps: int | None = Field(None, gt=0, le=10**9, description="overrides epochs when set")
    batch_size: int = Field(
        8, gt=0, le=2**20, description="rows per device per step (packed rows when packing)"
    )
    grad_accum: int = Field(1, gt=0, le=2**20, description="gradient accumulation steps")
    learning_rate: float | None = Field(
        None,
        gt=0,
        description="default by task and method: SFT/pretrain full 2e-5, LoRA/QLoRA 2e-4, prefix/prompt "
        "3e-2; dpo/kto 5e-7, 5e-6, 1e-3; reward 1e-5, 1e-4, 1e-3",
    )
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup", "cosine_with_min_lr"] = (
        "cosine"
    )
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps")
    warmup_ratio: float = Field(
        0.0, ge=0, lt=1, description="warm-up as a fraction of all steps (wins if set)"
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    optimizer: Literal[OPTIMIZERS] = "adamw_torch"  # type: ignore[valid-type]
    max_grad_norm: float = Field(1.0, ge=0, description="gradient clipping; 0 = off")
    gradient_checkpointing: bool | Literal["auto"] = Field(
        "auto", description="auto = on only if a memory estimate says the run would not fit without it"
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="mixed precision (autocast); auto = model.dtype's, else bf16 where the GPU has it, else fp32",
    )
    seed: int = Field(42, ge=0, lt=2**32, description="seed of initialization and data order")
    logging_steps: int = Field(10, gt=0, description="log loss/lr every N steps (metrics.jsonl)")
    eval_steps: int | None = Field(None, gt=0, description="None = evaluate at the end of each epoch")
    save_steps: int | None = Field(None, gt=0, description="None = save only the final result")
    save_total_limit: int | None = Field(2, gt=0, description="checkpoints kept")
    report_to: list[Literal[REPORTERS]] = Field(  # type: ignore[valid-type]
        default_factory=list,
        description="trackers: tensorboard, wandb, mlflow, trackio (their own integrations)",
    )


class RewardBase(Strict):
    weight: float = Field(1.0, description="its weight in the sum of rewards")


class MatchReward(RewardBase):
    """1.0 when the completion's answer equals the reference, else 0.0."""

    type: Literal["match"] = "match"
    column: str = Field(
        "answer",
        description="the reference: `answer` (the data's own: last assistant turn, output, completion or chosen) "
        "or another column of the rows",
    )
    pattern: str | None = Field(
        None,
        description="regex whose first group (or whole match), at its last occurrence, is the answer, in the "
        "completion and in the reference (e.g. '####\\s*(-?[\\d,.]+)' for GSM8K); None = the whole text",
    )
    normalize: bool = Field(
        True, description="compare case-folded, with whitespace and end punctuation trimmed"
    )


class RegexReward(RewardBase):
    """1.0 when the completion matches the pattern (a format check), else 0.0."""

    type: Literal["regex"] = "regex"
    pattern: str = Field(description="Python regex, searched in the completion")
    full: bool = Field(False, description="the whole completion must match, not just a part of it")


class LengthReward(RewardBase):
    """0 up to max_tokens completion tokens, then -1 per max_tokens beyond (a linear length penalty)."""

    type: Literal["length"] = "length"
    max_tokens: int = Field(gt=0, le=2**20, description="completion tokens that cost nothing")


class ModelReward(RewardBase):
    """The score of a reward model trained by `ftcli align` (task: reward), on prompt + completion as it
    trained."""

    type: Literal["model"] = "model"
    path: str = Field(description="the reward run dir (or its merged/)")


class PythonReward(RewardBase):
    """A function of the user's, called as TRL calls reward functions: fn(prompts, completions, **columns)."""

    type: Literal["python"] = "python"
    function: str = Field(description="module:function, or path/to/file.py:function (next to the recipe)")


Reward = Annotated[
    Union[MatchReward, RegexReward, LengthReward, ModelReward, PythonReward], Field(discriminator="type")
]


class AlignSpec(Strict):
    """`ftcli align`: the knobs of TRL's DPO, KTO, ORPO, CPO/SimPO, reward and GRPO trainers."""

    beta: float | None = Field(
        None,
        ge=0,
        description="dpo, kto, cpo: strength of the KL anchor to the reference (default 0.1); orpo: weight of "
        "the odds-ratio term (lambda, default 0.1); simpo: reward scale (default 2.0); grpo: KL coefficient "
        "(default 0: no reference model)",
    )
    loss_type: str | list[str] | None = Field(
        None,
        description="dpo: sigmoid (default), ipo, hinge, robust, ... (any the installed TRL offers; a list mixes); "
        "cpo: sigmoid (default), hinge or ipo; grpo: dapo (default), grpo, dr_grpo, bnpo, ... (as TRL offers)",
    )
    cpo_alpha: float | None = Field(
        None,
        ge=0,
        description="cpo, simpo: weight of the NLL term on the chosen answer; default 1.0 for cpo, 0.0 for "
        "simpo (> 0: CPO-SimPO)",
    )
    simpo_gamma: float = Field(
        0.5,
        ge=0,
        description="simpo: target reward margin gamma (the paper quotes gamma/beta; gamma = that x beta)",
    )
    loss_weights: list[float] | None = Field(None, description="weights when loss_type is a list")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="robust/cDPO label noise (dpo)")
    ref_model: str | None = Field(
        None,
        description="explicit reference model for full fine-tuning; None = the starting model (frozen copy), "
        "or for adapters the starting model with the new adapter disabled",
    )
    precompute_ref_log_probs: bool = Field(
        False, description="score the reference once up front (saves memory)"
    )
    max_prompt_length: int | None = Field(
        None, ge=1, description="prompt tokens kept (from the end); default half of data.max_length"
    )
    max_completion_length: int | None = Field(
        None,
        ge=1,
        description="answer tokens kept (from the start, within what the prompt leaves of "
        "data.max_length); default data.max_length",
    )
    num_generations: int = Field(
        8,
        ge=2,
        le=1024,
        description="grpo: completions sampled per prompt (the group its advantages compare)",
    )
    temperature: float = Field(1.0, gt=0, description="grpo: sampling temperature of the completions")
    use_vllm: bool | Literal["auto"] = Field(
        "auto", description="grpo: generate with vLLM (colocated); auto = when vLLM is installed and on a GPU"
    )
    rewards: list[Reward] = Field(
        default_factory=list,
        description="grpo: the reward functions, weighted and summed: match, regex, length, model, python",
    )
    desirable_weight: float = Field(1.0, gt=0, description="kto: weight of chosen (desirable) examples")
    undesirable_weight: float = Field(1.0, gt=0, description="kto: weight of rejected (undesirable) examples")
    center_rewards_coefficient: float | None = Field(
        None, description="reward: pull mean reward to 0 (InstructGPT)"
    )


class InferSpec(Strict):
    """`ftcli infer`: what to run and how to sample (command-line options override these)."""

    mode: Literal["generate", "score", "perplexity"] | None = Field(
        None, description="default score for reward models, else generate"
    )
    prompts: list[str] = Field(default_factory=list, description="prompts to run when none come from the CLI")
    input: str | None = Field(
        None, description=".txt (one prompt per line) or .jsonl (prompt or messages field)"
    )
    max_new_tokens: int = Field(256, gt=0, le=2**20)
    temperature: float = Field(0.0, ge=0, description="0 = greedy (reproducible)")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0 = off")
    repetition_penalty: float = Field(1.0, gt=0)
    num_return_sequences: int = Field(1, gt=0, le=1024)
    seed: int = Field(42, ge=0, lt=2**32)
    batch_size: int = Field(8, gt=0, le=2**16, description="prompts per generate call (left-padded)")
    chat_template: bool = Field(
        True,
        description="render prompts with the chat template the model trained with; false sends them as they are",
    )


class MultimodalSpec(Strict):
    """`task: caption`: a GIT vision-language model (vision encoder -> GIT projection -> model.name's causal LM)."""

    vision_model: str = Field(
        description="vision encoder: hub id (openai/clip-vit-base-patch16), local dir, or builtin:tiny-clip"
    )
    vision_revision: str | None = Field(None, description="hub branch, tag or commit of the vision model")
    keys_to_finetune: list[str] = Field(
        default_factory=list,
        description="besides the projection (always trained) and any LoRA: train parameters "
        "whose name contains one: vision. (ViT), lm. (whole LM), lm_head, lm.model.layers.11., ...",
    )
    keys_to_freeze: list[str] = Field(
        default_factory=list, description="freeze parameters whose name contains one"
    )
    vision_lora: bool = Field(False, description="lora/qlora: adapt the vision encoder's attention q/k/v too")
    caption_prompt: str = Field(
        "",
        description="text before every caption (e.g. 'a photo of'); image instruction "
        "and chat rows use the chat template instead",
    )


class OutputSpec(Strict):
    dir: str | None = Field(None, description="run directory; default runs/<recipe file name>")
    merge: bool = Field(False, description="also write adapter-merged full weights to <dir>/merged")


class DeepSpeedSpec(Strict):
    zero_stage: Literal[0, 1, 2, 3] = Field(
        2, description="ZeRO stage: 2 shards optimizer state and gradients, 3 also weights"
    )
    offload_optimizer: bool = Field(False, description="optimizer state in CPU RAM")
    offload_params: bool = Field(False, description="weights in CPU RAM (stage 3)")
    config_file: str | None = Field(None, description="your own DeepSpeed JSON instead of the options above")


class FsdpSpec(Strict):
    sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD"] = "FULL_SHARD"
    auto_wrap_policy: Literal["TRANSFORMER_BASED_WRAP", "SIZE_BASED_WRAP", "NO_WRAP"] = (
        "TRANSFORMER_BASED_WRAP"
    )
    state_dict_type: Literal["FULL_STATE_DICT", "SHARDED_STATE_DICT"] = Field(
        "FULL_STATE_DICT", description="FULL: one consolidated file at the end (loadable by transformers)"
    )
    cpu_offload: bool = False


class LaunchSpec(Strict):
    """Where the run executes: one process here, or accelerate-launched workers (DDP, DeepSpeed, FSDP)."""

    device: Literal["auto", "cuda", "mps", "cpu"] = Field(
        "auto",
        description="where every command runs: auto = a CUDA GPU, else Apple MPS, else the CPU; cpu also "
        "runs several processes as CPU workers",
    )
    num_processes: int | Literal["auto"] = Field(
        1, description="processes per machine; auto = every visible GPU"
    )
    num_machines: int = Field(
        1, gt=0, description="nodes; run the same command on each with its machine_rank"
    )
    machine_rank: int = Field(0, ge=0, description="this node's rank (0 = main)")
    main_process_ip: str | None = Field(None, description="the main node's address (multi-node)")
    main_process_port: Annotated[int, Field(gt=0, lt=65536)] | Literal["auto"] = Field(
        "auto",
        description="rendezvous port; auto = a free one on one machine (two runs on a node never collide), 29500 "
        "across machines (every node must name the same)",
    )
    strategy: Literal["ddp", "deepspeed", "fsdp"] = Field("ddp", description="how workers share the model")
    deepspeed: DeepSpeedSpec = Field(default_factory=DeepSpeedSpec)
    fsdp: FsdpSpec = Field(default_factory=FsdpSpec)
    config_file: str | None = Field(None, description="your own accelerate config file (wins over the above)")

    @model_validator(mode="after")
    def _check(self) -> LaunchSpec:
        if isinstance(self.num_processes, int) and self.num_processes < 1:
            raise ValueError("launch.num_processes: must be at least 1 (or auto)")
        if self.num_machines > 1 and not self.main_process_ip:
            raise ValueError("launch.main_process_ip: a multi-node run needs the main node's address")
        if self.machine_rank >= self.num_machines:
            raise ValueError(f"launch.machine_rank: must be below num_machines ({self.num_machines})")
        return self


class Recipe(Strict):
    description: str | None = Field(None, description="one line shown by `ftcli recipes`")
    task: Task = Field(
        "sft",
        description="; ".join(
            f"{', '.join(t for t, s in TASKS.items() if s.command == c)} (ftcli {c})"
            for c in ("train", "align")
        ),
    )
    model: ModelSpec
    method: Method = Field(default_factory=FullMethod)
    data: DataSpec
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    align: AlignSpec = Field(default_factory=AlignSpec)
    multimodal: MultimodalSpec | None = Field(None, description="task: caption only")
    infer: InferSpec = Field(default_factory=InferSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    launch: LaunchSpec = Field(default_factory=LaunchSpec)

    _source: str | None = PrivateAttr(None)  # the recipe file it was loaded from
    _templates: dict = PrivateAttr(default_factory=dict)  # key path -> its ${env:SECRET} text, frozen instead
    _origins: Any = PrivateAttr(None)  # key path -> "file:line" or "command line", from the loader

    def where(self, key: str) -> str | None:
        """Where a dotted key was written, so errors found after loading can still point at the YAML line."""
        return self._origins.find(tuple(key.split("."))) if self._origins is not None else None

    @model_validator(mode="before")
    @classmethod
    def _method_shorthand(cls, value: Any) -> Any:
        if isinstance(value, dict) and isinstance(value.get("method"), str):
            value = {**value, "method": {"type": value["method"]}}
        return value

    @model_validator(mode="after")
    def _rules(self) -> Recipe:
        from ftcli.recipe import rules

        rules.apply(self)
        return self
