"""`task: orpo` — TRL's ORPOTrainer (trl.experimental): SFT loss on the chosen answer plus an odds-ratio penalty on
the rejected one, with no reference model. It is fed ftcli's pre-tokenized pairs (same chat template and
truncation as DPO) through its tokenize_row (see upstream.TokenizedPairRows)."""

from __future__ import annotations

from pathlib import Path

from ftcli.recipe.schema import Recipe
from ftcli.tasks.preference import train_on_tokenized_pairs
from ftcli.tasks.runner import Setup, run_task, training_args
from ftcli.upstream import experimental_trainer


def run(recipe: Recipe, overwrite: bool = False, resume: bool = False, on_done=None) -> dict:
    return run_task(recipe, lambda r, out, res: _train(r, out, res, on_done), overwrite, resume)


def _train(recipe: Recipe, out: Path, resume: bool, on_done=None) -> dict:
    ORPOConfig, ORPOTrainer = experimental_trainer("orpo", "ORPOConfig", "ORPOTrainer")
    setup = Setup(recipe, tokens_per_step=2 * recipe.training.batch_size * recipe.data.max_length)
    args = training_args(
        ORPOConfig,
        recipe,
        out,
        setup,
        beta=recipe.align.beta,
        max_length=recipe.data.max_length,  # pairs are already cut to it by ftcli
    )
    return train_on_tokenized_pairs(ORPOTrainer, setup, args, out, resume, on_done)
