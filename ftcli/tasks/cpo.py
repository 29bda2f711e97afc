"""`task: cpo` and `task: simpo` — TRL's CPOTrainer (trl.experimental), reference-free. CPO: a DPO-style loss on
the policy's own log-probabilities plus an NLL term on the chosen answer (cpo_alpha). SimPO: the length-normalized
reward with a target margin (loss_type simpo, simpo_gamma), without the NLL term unless cpo_alpha > 0 (CPO-SimPO).
Fed ftcli's pre-tokenized pairs through tokenize_row (see upstream.TokenizedPairRows)."""

from __future__ import annotations

from pathlib import Path

from ftcli.errors import RecipeError
from ftcli.recipe.schema import Recipe
from ftcli.tasks.preference import train_on_tokenized_pairs
from ftcli.tasks.runner import Setup, run_task, training_args
from ftcli.upstream import cpo_loss_types, experimental_trainer

# Losses with a task (or knobs) of their own: SimPO is `task: simpo`; AlphaPO's alpha is not exposed.
NOT_CPO_LOSSES = ("simpo", "alphapo")


def run(recipe: Recipe, overwrite: bool = False, resume: bool = False, on_done=None) -> dict:
    return run_task(recipe, lambda r, out, res: _train(r, out, res, on_done), overwrite, resume)


def check(recipe: Recipe) -> None:
    """`task: cpo`'s loss, against what the installed TRL offers, before the run dir is made."""
    offered = [t for t in cpo_loss_types() if t not in NOT_CPO_LOSSES]
    loss_type = recipe.align.loss_type
    if loss_type == "simpo":
        raise RecipeError("SimPO is `task: simpo` (with align.simpo_gamma); use that", key="align.loss_type")
    if not isinstance(loss_type, str) or loss_type not in offered:
        raise RecipeError(
            f"{loss_type!r} is not a CPO loss of the installed TRL; it offers {', '.join(offered)}",
            key="align.loss_type",
        )


def _train(recipe: Recipe, out: Path, resume: bool, on_done=None) -> dict:
    CPOConfig, CPOTrainer = experimental_trainer("cpo", "CPOConfig", "CPOTrainer")
    setup = Setup(recipe, tokens_per_step=2 * recipe.training.batch_size * recipe.data.max_length)
    a = recipe.align
    simpo = recipe.task == "simpo"
    args = training_args(
        CPOConfig,
        recipe,
        out,
        setup,
        beta=a.beta,
        loss_type="simpo" if simpo else a.loss_type,
        cpo_alpha=a.cpo_alpha,
        label_smoothing=0.0 if simpo else a.label_smoothing,
        simpo_gamma=a.simpo_gamma,
        max_length=recipe.data.max_length,  # pairs are already cut to it by ftcli
    )
    return train_on_tokenized_pairs(CPOTrainer, setup, args, out, resume, on_done)
