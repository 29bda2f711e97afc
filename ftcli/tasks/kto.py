"""`task: kto` — TRL's KTOTrainer. KTO learns from unpaired good/bad examples; ftcli's preference pairs are
unpaired into (prompt, chosen, desirable) and (prompt, rejected, undesirable) rows, already tokenized."""

from __future__ import annotations

from pathlib import Path

from ftcli import report
from ftcli.recipe.schema import Recipe
from ftcli.tasks.preference import evaluation_accuracy, reference_model
from ftcli.tasks.runner import Setup, run_task, train_and_save, training_args
from ftcli.upstream import PreparedPairs, trainer_class


def run(recipe: Recipe, overwrite: bool = False, resume: bool = False, on_done=None) -> dict:
    return run_task(recipe, lambda r, out, res: _train(r, out, res, on_done), overwrite, resume)


def _train(recipe: Recipe, out: Path, resume: bool, on_done=None) -> dict:
    from trl import KTOConfig, KTOTrainer

    setup = Setup(recipe, tokens_per_step=2 * recipe.training.batch_size * recipe.data.max_length)
    a = recipe.align
    args = training_args(
        KTOConfig,
        recipe,
        out,
        setup,
        beta=a.beta,
        desirable_weight=a.desirable_weight,
        undesirable_weight=a.undesirable_weight,
        precompute_ref_log_probs=a.precompute_ref_log_probs,
        max_length=None,  # already cut by ftcli's data layer
    )

    class KtoPairs(PreparedPairs):
        def pairs_ready(self, dataset, args):
            if not self.calculate_KL:
                return dataset
            # TRL's KL estimate: each completion paired with another row's prompt, rotating within a batch.
            return dataset.map(
                lambda rows: {
                    "KL_completion_ids": [rows["completion_ids"][-1]] + rows["completion_ids"][:-1]
                },
                batched=True,
                batch_size=args.per_device_train_batch_size,
            )

    callback = report.make_callback(out)
    trainer = trainer_class(KTOTrainer, KtoPairs)(
        model=setup.model,
        ref_model=reference_model(recipe, setup),
        args=args,
        train_dataset=unpair(setup.data.train, recipe.data.seed),
        eval_dataset=unpair(setup.data.eval, recipe.data.seed) if setup.has_eval else None,
        processing_class=setup.tokenizer,
        callbacks=[callback],
    )
    summary = train_and_save(trainer, setup, out, resume, callback, on_done)
    summary.update(evaluation_accuracy(summary, "rewards/accuracies", "rewards/margins"))
    return summary


def unpair(pairs, seed: int):
    """Each pair as a desirable and an undesirable row, in a seeded shuffled order: KTO reads its data in order
    (its KL estimate pairs neighbours), so batches must mix good and bad rows of different prompts."""
    import random

    import datasets

    prompts = list(pairs["prompt_ids"])
    rows = [(p, c, True) for p, c in zip(prompts, pairs["chosen_ids"])]
    rows += [(p, r, False) for p, r in zip(prompts, pairs["rejected_ids"])]
    random.Random(seed).shuffle(rows)
    return datasets.Dataset.from_dict(
        {
            "prompt_ids": [r[0] for r in rows],
            "completion_ids": [r[1] for r in rows],
            "label": [r[2] for r in rows],
        }
    )
