"""`task: sft` and `task: pretrain` — a thin wiring of TRL's SFTTrainer around ftcli's prepared (tokenized,
label-masked, packed) data. Both objectives are next-token prediction; they differ only in the data format and
which tokens carry the loss, which the data layer has already decided."""

from __future__ import annotations

from pathlib import Path

from ftcli import report
from ftcli.data.collate import PackedCollator, PaddedCollator
from ftcli.recipe.schema import Recipe
from ftcli.tasks.runner import Setup, make_trainer, run_task, train_and_save, training_args


def run(recipe: Recipe, overwrite: bool = False, resume: bool = False, on_done=None) -> dict:
    """Train and save. `on_done(model, tokenizer)` is called with the trained model before it is released."""
    return run_task(recipe, lambda r, out, res: _train(r, out, res, on_done), overwrite, resume)


def _train(recipe: Recipe, out: Path, resume: bool, on_done=None) -> dict:
    from trl import SFTConfig, SFTTrainer

    setup = Setup(recipe, tokens_per_step=recipe.training.batch_size * recipe.data.max_length)
    collator_cls = PackedCollator if setup.data.packed else PaddedCollator
    pad = setup.tokenizer.pad_token_id
    train_collator, eval_collator = collator_cls(pad), collator_cls(pad)
    args = training_args(
        SFTConfig,
        recipe,
        out,
        setup,
        include_num_input_tokens_seen="non_padding",
        dataset_kwargs={"skip_prepare_dataset": True},
        max_length=None,
        packing=False,  # already packed, without cross-row attention, by ftcli's data layer
    )
    callback = report.make_callback(out, train_collator)
    trainer = make_trainer(SFTTrainer, setup, args, train_collator, eval_collator, callback)
    summary = train_and_save(trainer, setup, out, resume, callback, on_done)
    real, padded = train_collator.real_tokens, train_collator.padded_tokens
    seconds = summary["train_seconds"]
    summary.update(
        final_eval_perplexity=report.perplexity(summary["final_eval_loss"])
        if summary["final_eval_loss"]
        else None,
        tokens=trainer.state.num_input_tokens_seen,
        tokens_per_s=round(real / seconds, 1) if seconds > 0 else None,
        padding_fraction=round(1 - real / padded, 4) if padded else None,
    )
    return summary
