"""Pieces the preference objectives (dpo, kto, orpo, cpo, simpo, reward) share: the reference model, the
preference-accuracy summary fields, and the run of TRL's reference-free experimental trainers (orpo, cpo)."""

from __future__ import annotations

from ftcli import report
from ftcli.recipe.registry import METHODS
from ftcli.recipe.schema import Recipe
from ftcli.tasks.runner import train_and_save
from ftcli.upstream import TokenizedPairRows, trainer_class


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


def train_on_tokenized_pairs(trainer_cls, setup, args, out, resume: bool, on_done=None) -> dict:
    """TRL's experimental ORPO/CPO trainer fed ftcli's tokenized pairs (upstream.TokenizedPairRows), trained and
    saved, with the held-out preference accuracy."""
    callback = report.make_callback(out)
    trainer = trainer_class(trainer_cls, TokenizedPairRows)(
        model=setup.model,
        args=args,
        train_dataset=setup.data.train,
        eval_dataset=setup.data.eval if setup.has_eval else None,
        processing_class=setup.tokenizer,
        callbacks=[callback],
    )
    summary = train_and_save(trainer, setup, out, resume, callback, on_done)
    summary.update(evaluation_accuracy(summary, "rewards/accuracies", "rewards/margins"))
    return summary
