"""`task: orpo` — TRL's ORPOTrainer (trl.experimental): SFT loss on the chosen answer plus an odds-ratio penalty on
the rejected one, with no reference model. It is fed ftcli's pre-tokenized pairs (same chat template and
truncation as DPO) through its tokenize_row (see upstream.TokenizedPairRows)."""

from __future__ import annotations

from pathlib import Path

from ftcli import report
from ftcli.recipe.schema import Recipe
from ftcli.tasks.preference import evaluation_accuracy
from ftcli.tasks.runner import Setup, run_task, train_and_save, training_args
from ftcli.upstream import TokenizedPairRows, experimental_trainer, trainer_class


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
    callback = report.make_callback(out)
    trainer = trainer_class(ORPOTrainer, TokenizedPairRows)(
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
