"""`task: dpo` — TRL's DPOTrainer on ftcli's pre-tokenized pairs (prompt_ids / chosen_ids / rejected_ids); and
`task: vlm_dpo`, the same on a pretrained vision-language model with pairs about images: the prompts carry each
image's tokens (data/vision.py) and the batches the processor's pixel values (data/collate.py).

The reference model: for adapter methods, TRL scores it with the adapter switched to a frozen copy of the starting
adapter, so a fresh adapter's reference is the base and a continued SFT adapter's reference is the SFT model; for
full fine-tuning, a frozen copy of the starting model, or `align.ref_model`.
"""

from __future__ import annotations

from pathlib import Path

from ftcli import report
from ftcli.data.collate import VisionPairCollator
from ftcli.errors import RecipeError
from ftcli.recipe.registry import TASKS
from ftcli.recipe.schema import Recipe
from ftcli.tasks.preference import evaluation_accuracy, reference_model
from ftcli.tasks.runner import Setup, run_task, train_and_save, training_args
from ftcli.tasks.vlm import VlmSetup
from ftcli.upstream import PreparedPairs, dpo_loss_types, trainer_class


def run(recipe: Recipe, overwrite: bool = False, resume: bool = False, on_done=None) -> dict:
    return run_task(recipe, lambda r, out, res: _train(r, out, res, on_done), overwrite, resume)


def check(recipe: Recipe) -> None:
    """Before the run dir is made: TRL itself checks the loss name only at the first training step."""
    known = dpo_loss_types()
    unknown = [t for t in _loss_types(recipe) if known and t not in known]
    if unknown:
        raise RecipeError(
            f"{unknown[0]!r} is not a DPO loss of the installed TRL; it offers {', '.join(known)}",
            key="align.loss_type",
        )


def _loss_types(recipe: Recipe) -> list[str]:
    loss_type = recipe.align.loss_type
    return [loss_type] if isinstance(loss_type, str) else list(loss_type)


def _train(recipe: Recipe, out: Path, resume: bool, on_done=None) -> dict:
    from trl import DPOConfig, DPOTrainer

    vision = TASKS[recipe.task].head == "vlm"
    setup = (VlmSetup if vision else Setup)(
        recipe, tokens_per_step=2 * recipe.training.batch_size * recipe.data.max_length
    )
    a = recipe.align
    args = training_args(
        DPOConfig,
        recipe,
        out,
        setup,
        beta=a.beta,
        loss_type=_loss_types(recipe),
        loss_weights=a.loss_weights,
        label_smoothing=a.label_smoothing,
        precompute_ref_log_probs=a.precompute_ref_log_probs,
        max_length=None,  # pairs are already cut to data.max_length / align.max_prompt_length
    )

    callback = report.make_callback(out)
    try:
        trainer = trainer_class(DPOTrainer, PreparedPairs)(  # pairs tokenized and length-checked by ftcli
            model=setup.model,
            ref_model=reference_model(recipe, setup),
            args=args,
            train_dataset=setup.data.train,
            eval_dataset=setup.data.eval if setup.has_eval else None,
            processing_class=setup.processor if vision else setup.tokenizer,
            data_collator=VisionPairCollator(setup.tokenizer.pad_token_id, processor=setup.processor)
            if vision
            else None,
            callbacks=[callback],
        )
    except (ValueError, NotImplementedError) as exc:
        raise RecipeError(
            f"TRL's DPOTrainer refused this setup: {str(exc).splitlines()[0]}", key="method.type"
        ) from None
    summary = train_and_save(trainer, setup, out, resume, callback, on_done)
    summary.update(evaluation_accuracy(summary, "rewards/accuracies", "rewards/margins"))
    return summary
