"""`task: reward` — a reward model (one score per sequence, a sequence-classification head on the causal LM)
trained with TRL's RewardTrainer on ftcli's pairs: the Bradley-Terry loss -log σ(r_chosen - r_rejected [- margin])."""

from __future__ import annotations

from pathlib import Path

from ftcli import report
from ftcli.recipe.schema import Recipe
from ftcli.tasks.preference import evaluation_accuracy
from ftcli.tasks.runner import Setup, run_task, train_and_save, training_args
from ftcli.upstream import trainer_class


def run(recipe: Recipe, overwrite: bool = False, resume: bool = False, on_done=None) -> dict:
    return run_task(recipe, lambda r, out, res: _train(r, out, res, on_done), overwrite, resume)


def _train(recipe: Recipe, out: Path, resume: bool, on_done=None) -> dict:
    from trl import RewardConfig, RewardTrainer

    setup = Setup(recipe, tokens_per_step=2 * recipe.training.batch_size * recipe.data.max_length)
    args = training_args(
        RewardConfig,
        recipe,
        out,
        setup,
        max_length=None,  # pairs are already cut to data.max_length
        center_rewards_coefficient=recipe.align.center_rewards_coefficient,
    )
    callback = report.make_callback(out)
    trainer = trainer_class(RewardTrainer)(
        model=setup.model,
        args=args,
        train_dataset=_whole_sequences(setup.data.train),
        eval_dataset=_whole_sequences(setup.data.eval) if setup.has_eval else None,
        processing_class=setup.tokenizer,
        callbacks=[callback],
    )
    summary = train_and_save(trainer, setup, out, resume, callback, on_done)
    summary.update(evaluation_accuracy(summary, "accuracy", "margin"))
    return summary


def _whole_sequences(pairs):
    """A reward model scores prompt+answer as one sequence; RewardTrainer takes chosen_ids/rejected_ids so."""
    return pairs.map(
        lambda row: {
            "chosen_ids": row["prompt_ids"] + row["chosen_ids"],
            "rejected_ids": row["prompt_ids"] + row["rejected_ids"],
        },
        remove_columns=["prompt_ids"],
    )
