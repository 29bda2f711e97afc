"""gradient_checkpointing: auto turns on only when the memory estimate says the run would not fit."""

from transformers import AutoModelForCausalLM

from ftcli.models.builtin import builtin_path
from ftcli.models.memory import choose_gradient_checkpointing, estimate_training_bytes


def test_auto_checkpointing_follows_the_memory_estimate(monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(builtin_path("builtin:tiny-llama"))
    tokens = 8 * 1024
    need = estimate_training_bytes(model, tokens, checkpointing=False)
    assert estimate_training_bytes(model, tokens, checkpointing=True) < need

    monkeypatch.setenv("FTCLI_MEMORY_LIMIT_GB", "64")
    enabled, why = choose_gradient_checkpointing("auto", model, tokens)
    assert enabled is False and why.startswith("off:")

    monkeypatch.setenv("FTCLI_MEMORY_LIMIT_GB", str(need / 1024**3 / 2))
    enabled, why = choose_gradient_checkpointing("auto", model, tokens)
    assert enabled is True and why.startswith("on:") and "FTCLI_MEMORY_LIMIT_GB" in why

    assert choose_gradient_checkpointing(False, model, tokens) == (False, "set in the recipe")
