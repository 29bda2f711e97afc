"""Which device and dtypes a recipe runs with on this machine: one answer for training, inference, merging and
evaluation, so the model and its inputs always sit on the same device.

`launch.device: auto` takes a CUDA GPU, else Apple's MPS, else the CPU. The compute dtype (`model.dtype: auto`) is
bf16 on a GPU that has it, else fp32: frozen weights are loaded in it, and 16-bit autocast runs the matmuls in it.
Trained weights are fp32 master weights, as DeepSpeed and FSDP keep them, so every engine runs the same arithmetic.
"""

from __future__ import annotations

from ftcli.errors import RecipeError
from ftcli.recipe.registry import METHODS
from ftcli.recipe.schema import BNB_OPTIMIZERS, Recipe


def resolve_device(choice: str = "auto") -> str:
    """'cuda', 'mps' or 'cpu' for `launch.device`; asking for one this machine lacks is an error."""
    import torch

    cuda, mps = torch.cuda.is_available(), _mps_available()
    if choice == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if choice == "cuda" and not cuda:
        raise RecipeError(
            "no CUDA GPU is visible here (torch.cuda.is_available() is False); set launch.device: auto "
            "or cpu",
            key="launch.device",
        )
    if choice == "mps" and not mps:
        raise RecipeError(
            "Apple's MPS backend is not available here; set launch.device: auto or cpu", key="launch.device"
        )
    return choice


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def device_of(recipe: Recipe) -> str:
    return resolve_device(recipe.launch.device)


def compute_dtype(recipe: Recipe):
    """The dtype the math runs in: `model.dtype`, else that of an explicit `training.precision`, else bf16 on a
    CUDA GPU that has it, else fp32."""
    import torch

    named = {
        "float32": torch.float32,
        "bfloat16": torch.bfloat16,
        "float16": torch.float16,
        "fp32": torch.float32,
        "bf16": torch.bfloat16,
        "fp16": torch.float16,
    }
    if recipe.model.dtype != "auto":
        return named[recipe.model.dtype]
    if recipe.training.precision != "auto":
        return named[recipe.training.precision]
    bf16 = device_of(recipe) == "cuda" and torch.cuda.is_bf16_supported()
    return torch.bfloat16 if bf16 else torch.float32


def trained_dtype(recipe: Recipe):
    """The dtype of the weights a run trains: fp32 master weights, under 16-bit autocast too (AdamW's small updates
    survive, and DDP, DeepSpeed and FSDP run the same arithmetic); only a full fine-tune whose recipe names a 16-bit
    `model.dtype` trains those weights in it (pure 16-bit: half the memory, updates below the dtype's resolution
    are lost)."""
    import torch

    if METHODS[recipe.method.type].trains_base and recipe.model.dtype in ("bfloat16", "float16"):
        return compute_dtype(recipe)
    return torch.float32


def cast_trained(model, recipe: Recipe) -> str:
    """Put every trainable weight in `trained_dtype` (also undoing TRL's bf16 cast of QLoRA adapters); returns the
    dtype's name for the plan and summary."""
    dtype = trained_dtype(recipe)
    for param in model.parameters():
        if param.requires_grad and param.dtype != dtype:
            param.data = param.data.to(dtype)
    return str(dtype).removeprefix("torch.")


def precision(recipe: Recipe) -> str:
    """Mixed precision of training: `training.precision`, or with auto the compute dtype's."""
    import torch

    choice = recipe.training.precision
    if choice == "auto":
        dtype = compute_dtype(recipe)
        return "bf16" if dtype == torch.bfloat16 else "fp16" if dtype == torch.float16 else "fp32"
    return choice


def check_hardware(recipe: Recipe) -> None:
    """Refuse, before anything starts, what this machine's device cannot run; never swap it silently."""
    import torch

    device = device_of(recipe)
    if recipe.training.precision == "fp16" and device != "cuda":
        raise RecipeError(
            f"fp16 mixed precision needs a CUDA GPU and this run is on the {device}; use fp32 or bf16",
            key="training.precision",
        )
    if recipe.training.precision == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        raise RecipeError("this GPU has no bf16; use fp16", key="training.precision")
    if recipe.training.optimizer in BNB_OPTIMIZERS and device != "cuda":
        raise RecipeError(
            f"{recipe.training.optimizer} is a bitsandbytes CUDA optimizer and this run is on the "
            f"{device}; set training.optimizer: adamw_torch (ftcli does not swap it silently)",
            key="training.optimizer",
        )
    if METHODS[recipe.method.type].quantized and device == "mps":
        raise RecipeError(
            "bitsandbytes quantization runs on CUDA or the CPU, not on MPS; use method lora or "
            "launch.device: cpu",
            key="method.type",
        )


def quantized_device_map(recipe: Recipe) -> dict:
    """A quantized model is placed by bitsandbytes at load time: one whole copy per process, on that process's GPU
    (accelerate workers set LOCAL_RANK), or on the CPU."""
    import os

    import torch

    if device_of(recipe) != "cuda":
        return {"": "cpu"}
    return {"": int(os.environ.get("LOCAL_RANK", torch.cuda.current_device()))}


def input_device(model):
    """Where a model's inputs must go: the device of its (first) weights."""
    return next(model.parameters()).device
