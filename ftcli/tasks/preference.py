"""Pieces the preference objectives (dpo, kto, orpo, cpo, simpo, reward) share: the reference model and the
preference-accuracy summary fields."""

from __future__ import annotations

from ftcli.recipe.registry import METHODS
from ftcli.recipe.schema import Recipe


def reference_model(recipe: Recipe, setup):
    """Full fine-tuning needs a separate frozen reference: `align.ref_model`, else the starting model. Adapter
    methods return None: TRL then scores the reference through the same weights with the adapter disabled (or a
    frozen copy of a continued adapter)."""
    if not METHODS[recipe.method.type].trains_base:
        return None
    from ftcli.models.load import load_base_model

    spec = recipe.model.model_copy(update={"name": recipe.align.ref_model or recipe.model.name})
    ref = load_base_model(recipe.model_copy(update={"model": spec}))
    ref.config.use_cache = False
    ref.eval().requires_grad_(False)
    return ref


def evaluation_accuracy(summary: dict, accuracy_key: str, margin_key: str | None) -> dict:
    """Held-out preference accuracy and margin from the final evaluation, under names every task shares."""
    final = summary.get("final_eval") or {}
    out = {"eval_accuracy": final.get(accuracy_key)}
    if margin_key:
        out["eval_margin"] = final.get(margin_key)
    return out
