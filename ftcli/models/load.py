"""Load a recipe's tokenizer and base model: hub id, local dir, run dir or builtin, with dtype and quantization."""

from __future__ import annotations

import contextlib
from pathlib import Path

from ftcli.errors import RecipeError, UserError
from ftcli.models.builtin import builtin_path, is_builtin
from ftcli.recipe.registry import METHODS, TASKS
from ftcli.recipe.schema import ModelSpec, Recipe


def model_source(spec: ModelSpec) -> str:
    """Where from_pretrained should look: a builtin's cache dir, a local dir, or the hub id."""
    if is_builtin(spec.name):
        return str(builtin_path(spec.name))
    path = Path(spec.name)
    if path.is_dir() and not (path / "config.json").exists():
        if (path / "adapter_config.json").exists():
            hint = (
                f"; a merged copy is in {path / 'merged'}"
                if (path / "merged" / "config.json").exists()
                else ""
            )
            raise RecipeError(
                f"{spec.name} holds a PEFT adapter, not full weights: set model.adapter to it and model.name to its "
                f"base{hint}",
                key="model.name",
            )
        raise RecipeError(f"{spec.name} has no config.json; is it a model or run dir?", key="model.name")
    return spec.name


def load_processor(spec: ModelSpec, source: str | None = None):
    """A vision-language model's processor (its tokenizer, image processor and chat template), or the one saved at
    `source`. Pillow image processors on purpose: they need no torchvision."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(
            source or model_source(spec),
            revision=spec.revision,
            trust_remote_code=spec.trust_remote_code,
            backend="pil",
        )
    except (OSError, ValueError) as exc:
        raise _load_error(spec, exc) from None
    except ImportError as exc:  # Qwen2/2.5-VL's processor holds a video processor, which transformers builds
        # with torchvision only (its images still use the Pillow processor)
        if "video processor" not in str(exc).lower():
            raise
        raise UserError(
            f"{spec.name}'s processor needs torchvision, for the video processor transformers puts in it: "
            "pip install torchvision (the build that matches your torch)"
        ) from None
    tokenizer = processor.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return processor


def load_tokenizer(spec: ModelSpec, source: str | None = None):
    """The model's tokenizer, or the one saved at `source` (a run dir keeps the tokenizer it trained with)."""
    from transformers import AutoTokenizer

    source = source or model_source(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, revision=spec.revision, trust_remote_code=spec.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise _load_error(spec, exc) from None
    if tokenizer.pad_token is None:
        # Padding is never attended to nor learned from, so EOS is a safe stand-in.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def quantization_config(recipe: Recipe):
    method = recipe.method
    if not METHODS[method.type].quantized:
        return None
    import torch
    from transformers import BitsAndBytesConfig

    from ftcli.models.hardware import compute_dtype

    # A vision-language model quantizes its language model only: the vision tower and projector stay as they are
    skip = {"llm_int8_skip_modules": VISION_PARTS} if TASKS[recipe.task].head == "vlm" else {}
    if method.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True, **skip)
    dtype = compute_dtype(recipe) if method.compute_dtype == "auto" else getattr(torch, method.compute_dtype)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=method.quant_type,
        bnb_4bit_use_double_quant=method.double_quant,
        bnb_4bit_compute_dtype=dtype,
        **skip,
    )


# Module names of vision towers and projectors across transformers' vision-language models (LLaVA, LLaVA-NeXT,
# Qwen2/2.5-VL, Idefics3, PaliGemma, Gemma 3, Mllama), and the LM head, kept out of quantization (transformers
# matches each as a regex from the start of a module's full name, up to a name boundary).
VISION_PARTS = [
    rf"(.*\.)?{name}"
    for name in (
        "vision_tower",
        "visual",
        "vision_model",
        "multi_modal_projector",
        "mm_projector",
        "connector",
    )
] + ["lm_head"]


def load_base_model(recipe: Recipe, device: str | None = None):
    """The base model in the compute dtype, quantized for QLoRA: a causal LM, or for `task: reward` the same
    checkpoint with a one-output sequence-classification head (new, seeded) on top. Without `device` it stays
    where it loads (for training: the Trainer or the distributed engine places it); inference loads it onto
    `device`. Pickle weights are refused unless model.allow_pickle (see refuse_pickle)."""
    import transformers

    from ftcli.models.hardware import compute_dtype, quantized_device_map

    spec = recipe.model
    refuse_pickle(spec)
    kwargs = dict(
        revision=spec.revision,
        trust_remote_code=spec.trust_remote_code,
        dtype=compute_dtype(recipe),
        quantization_config=quantization_config(recipe),
        use_safetensors=None if spec.allow_pickle else True,  # None: safetensors first, else pickle
    )
    if spec.attn_implementation:
        kwargs["attn_implementation"] = spec.attn_implementation
    head = TASKS[recipe.task].head
    auto = transformers.AutoModelForImageTextToText if head == "vlm" else transformers.AutoModelForCausalLM
    score = head == "score"
    if score:  # one score per sequence
        auto, kwargs["num_labels"] = transformers.AutoModelForSequenceClassification, 1
        transformers.set_seed(recipe.training.seed)  # the score head is freshly initialized
    if METHODS[recipe.method.type].quantized:
        kwargs["device_map"] = quantized_device_map(recipe)
    elif device is not None:
        kwargs["device_map"] = {"": device}
    try:  # a new score head (and an unused lm_head) is expected: transformers' report of it is not shown
        with _transformers_errors_only() if score else contextlib.nullcontext():
            model = auto.from_pretrained(model_source(spec), **kwargs)
    except (OSError, ValueError) as exc:
        raise _load_error(spec, exc) from None
    if score and model.config.pad_token_id is None:
        # The score is read at the last non-pad token; bases such as Llama 3 and Mistral name no pad id, and a
        # saved or merged reward model without one is refused by transformers' pipelines at batch size > 1.
        model.config.pad_token_id = load_tokenizer(spec).pad_token_id
    return model


@contextlib.contextmanager
def _transformers_errors_only():
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


# Pickle files run code when they are unpickled; safetensors files are plain tensors.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# the Trainer's own state beside the weights of a checkpoint, not weights
_TRAINER_STATE = ("training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state")
_PICKLE_ADVICE = (
    "pickle can run code when loaded: convert the weights to safetensors, or set model.allow_pickle: true "
    "if you trust this checkpoint"
)
# what from_pretrained(use_safetensors=True) says when there is no safetensors file (hub, local dir)
_NO_SAFETENSORS = ("cannot be loaded with `safetensors`", "Error no file named model.safetensors")


def refuse_pickle(spec: ModelSpec) -> None:
    """Refuse a base or model.adapter whose weights are pickle only, unless model.allow_pickle. For the base,
    from_pretrained(use_safetensors=True) enforces this anyway (this is the clear message for a local dir); peft
    has no such switch and falls back to adapter_model.bin, so adapters are checked here, before any loading."""
    if spec.allow_pickle:
        return
    for key, source in (("model.name", model_source(spec)), ("model.adapter", spec.adapter)):
        if not source:
            continue
        found = _pickle_only(Path(source)) if Path(source).is_dir() else None
        if found is None and key == "model.adapter" and not Path(source).exists():
            found = _hub_adapter_pickle_only(source)
        if found:
            raise RecipeError(f"{source} holds only pickle weights ({found}); {_PICKLE_ADVICE}", key=key)


def _pickle_only(path: Path) -> str | None:
    """The first pickle weights file of a dir whose weights are not in safetensors, else None. An adapter dir
    needs its own adapter_model.safetensors, non-empty (peft takes adapter_model.bin when that is missing, whatever
    other .safetensors file lies beside it); a model dir any non-empty safetensors file."""
    files = {f.name: f for f in path.iterdir() if f.is_file()}
    if (path / "adapter_config.json").is_file():
        safe = ["adapter_model.safetensors"]
    else:
        safe = [n for n in files if n.endswith(".safetensors")]
    if any(n in files and files[n].stat().st_size > 0 for n in safe):
        return None
    return next(
        (n for n in sorted(files) if n.endswith(_PICKLE_SUFFIXES) and not n.startswith(_TRAINER_STATE)), None
    )


def _hub_adapter_pickle_only(repo: str) -> str | None:
    """'adapter_model.bin' when a hub adapter has no adapter_model.safetensors (peft would load the .bin). Any other
    failure (no such repo, offline with nothing cached) is left for peft to report."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        hf_hub_download(repo, "adapter_model.safetensors")
        return None
    except LocalEntryNotFoundError:  # offline: peft would take a cached .bin
        cached = try_to_load_from_cache(repo, "adapter_model.bin")
        return "adapter_model.bin" if isinstance(cached, str) else None
    except EntryNotFoundError:  # the repo exists without it
        return "adapter_model.bin"
    except Exception:  # peft tells the user what is wrong with the repo
        return None


def _load_error(spec: ModelSpec, exc: Exception) -> UserError:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if not spec.allow_pickle and any(m in text for m in _NO_SAFETENSORS):
        return RecipeError(
            f"{spec.name} has no safetensors weights (pickle ones are refused); {_PICKLE_ADVICE}",
            key="model.name",
        )
    if "gated" in text.lower() or "401" in text or "403" in text:
        return RecipeError(
            f"{spec.name} is gated: request access on its hub page, then `hf auth login` ({text})",
            key="model.name",
        )
    return RecipeError(f"cannot load {spec.name}: {text}", key="model.name")


def training_config(model) -> None:
    """Before training: no KV cache. With `use_cache` on, transformers 5 no longer reads packed documents from
    `position_ids`, and packed rows silently attend across documents (tested)."""
    _config(model).use_cache = False


def inference_config(model) -> None:
    """After training (and for inference): the KV cache back on, so saved and loaded models generate fast."""
    _config(model).use_cache = True


def _config(model):
    return model.get_base_model().config if hasattr(model, "get_base_model") else model.config
