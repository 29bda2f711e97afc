"""A training-memory estimate, used to turn gradient checkpointing on only when a run would not fit without it."""

from __future__ import annotations

import os

GIB = 1024**3


def available_memory(device: str) -> tuple[int, str]:
    """Bytes the run may use on `device`, and where that number came from. FTCLI_MEMORY_LIMIT_GB overrides (tests,
    shared GPUs)."""
    if os.environ.get("FTCLI_MEMORY_LIMIT_GB"):
        return int(float(os.environ["FTCLI_MEMORY_LIMIT_GB"]) * GIB), "FTCLI_MEMORY_LIMIT_GB"
    import torch

    if device == "cuda":
        free, _total = torch.cuda.mem_get_info()
        return free, "free GPU memory"
    import psutil

    return psutil.virtual_memory().available, "available RAM"


def estimate_training_bytes(model, tokens_per_step: int, checkpointing: bool) -> int:
    """Weights (trained ones as fp32 masters) + their fp32 gradients and AdamW state + activations (Korthikanti et
    al.'s 34·h bytes per token and layer in 16-bit, fused attention) + the logits and their gradient."""
    config = getattr(model, "config", None)
    hidden = getattr(config, "hidden_size", 0) or 0
    layers = getattr(config, "num_hidden_layers", 0) or 0
    vocab = getattr(config, "vocab_size", 0) or 0
    weights = sum(p.numel() * (4 if p.requires_grad else p.element_size()) for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = trainable * (4 + 8)  # fp32 gradient + two fp32 Adam moments
    act_bytes = next(model.parameters()).element_size() if hidden else 4
    per_token_layer = (2 if checkpointing else 34) * hidden * act_bytes // 2
    activations = tokens_per_step * per_token_layer * layers
    if checkpointing:
        activations += tokens_per_step * 34 * hidden * act_bytes // 2  # the one layer being recomputed
    logits = tokens_per_step * vocab * 4 * 2
    return weights + optimizer + activations + logits


def choose_gradient_checkpointing(
    setting, model, tokens_per_step: int, device: str = "cpu"
) -> tuple[bool, str]:
    if isinstance(setting, bool):
        return setting, "set in the recipe"
    need = estimate_training_bytes(model, tokens_per_step, checkpointing=False)
    have, where = available_memory(device)
    if need <= 0.8 * have:
        return False, f"off: ~{need / GIB:.2f} GiB needed fits in {have / GIB:.1f} GiB ({where})"
    return True, f"on: ~{need / GIB:.2f} GiB needed without it exceeds 80% of {have / GIB:.1f} GiB ({where})"
