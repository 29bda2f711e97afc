"""`task: caption` — GIT-style vision-language training (image captioning and image-instruction SFT) with
transformers' Trainer on ftcli's GIT model: image rows are tokenized by the data layer, images are read and
preprocessed per batch, and checkpoints and outputs hold only the trained tensors (upstream.TrainedTensorsOnly)."""

from __future__ import annotations

from pathlib import Path

from ftcli import report
from ftcli.data.collate import ImageCollator
from ftcli.models.memory import choose_gradient_checkpointing
from ftcli.models.multimodal import build_git, image_token_count, part_counts, save_git_outputs
from ftcli.recipe.schema import Recipe
from ftcli.tasks.runner import Setup, make_trainer, run_task, train_and_save, training_args
from ftcli.upstream import TrainedTensorsOnly

PART_NAMES = {"vision": "vision", "projection": "projection", "lm": "LM", "head": "head", "adapters": "LoRA"}


def run(recipe: Recipe, overwrite: bool = False, resume: bool = False, on_done=None) -> dict:
    return run_task(recipe, lambda r, out, res: _train(r, out, res, on_done), overwrite, resume)


class CaptionSetup(Setup):
    def build_model(self, tokens_per_step: int):
        recipe = self.recipe
        model, self.processor = build_git(recipe)
        tokens = tokens_per_step + recipe.training.batch_size * image_token_count(
            model
        )  # image tokens go first
        setting = recipe.training.gradient_checkpointing
        self.checkpointing, self.checkpointing_why = choose_gradient_checkpointing(
            setting, model.lm, tokens, self.device
        )
        self.parts = part_counts(model)
        return model

    def unused_parameters(self) -> bool:
        """A trained vision encoder has weights its last hidden state skips (CLIP's post_layernorm, SigLIP's
        pooling head)."""
        return any(n.startswith("vision.") and p.requires_grad for n, p in self.model.named_parameters())

    def plan_rows(self) -> list[tuple[str, str]]:
        spec = self.recipe.multimodal
        parts = ", ".join(
            f"{PART_NAMES[p]} {report.human(trainable)}/{report.human(total)}"
            for p, (total, trainable) in self.parts.items()
        )
        lm = self.model.lm
        if "head" in self.parts and lm.get_output_embeddings().weight is lm.get_input_embeddings().weight:
            parts += " (the head is tied to the input embeddings: training one trains both)"
        return [("vision model", spec.vision_model), ("trainable by part", parts)]

    def save_outputs(self, model, out: Path, weights: bool) -> dict:
        return save_git_outputs(
            model, self.tokenizer, self.processor, self.recipe, out, self.parts, self.trained_template()
        )


def _train(recipe: Recipe, out: Path, resume: bool, on_done=None) -> dict:
    from transformers import Trainer, TrainingArguments

    setup = CaptionSetup(recipe, tokens_per_step=recipe.training.batch_size * recipe.data.max_length)
    pad = setup.tokenizer.pad_token_id
    train_collator = ImageCollator(pad, image_processor=setup.processor)
    eval_collator = ImageCollator(pad, image_processor=setup.processor)
    args = training_args(TrainingArguments, recipe, out, setup, include_num_input_tokens_seen="non_padding")
    callback = report.make_callback(out, train_collator)
    trainer = make_trainer(Trainer, setup, args, train_collator, eval_collator, callback, TrainedTensorsOnly)
    summary = train_and_save(trainer, setup, out, resume, callback, on_done)
    seconds = summary["train_seconds"]
    summary.update(
        final_eval_perplexity=report.perplexity(summary["final_eval_loss"])
        if summary["final_eval_loss"]
        else None,
        images_per_s=round(
            trainer.state.global_step * recipe.training.batch_size * recipe.training.grad_accum / seconds, 2
        )
        if seconds > 0
        else None,
        trainable_by_part={p: trainable for p, (_, trainable) in setup.parts.items()},
    )
    return summary
