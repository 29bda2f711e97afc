"""`task: vlm` — fine-tuning a pretrained vision-language model (LLaVA, LLaVA-NeXT, Qwen2-VL / Qwen2.5-VL, as
AutoModelForImageTextToText loads them) on image conversations, with transformers' Trainer. Rows are laid
out by the model's own processor and chat template (data/vision.py), the loss is on the assistant answers, and
images are read and preprocessed per batch. LoRA/QLoRA adapt the language model by default (QLoRA quantizes only
the language model); full fine-tuning trains all but the vision tower unless method.keys_to_finetune names parts.
The run dir is a peft adapter or full weights plus the processor, loadable with plain transformers/peft."""

from __future__ import annotations

from pathlib import Path

from ftcli import report
from ftcli.data.collate import VisionCollator
from ftcli.models.load import load_processor
from ftcli.models.vlm import LANGUAGE_MODEL, VISION_TOWER, part_name, vision_tower_key
from ftcli.recipe.schema import Recipe
from ftcli.tasks.runner import Setup, make_trainer, run_task, train_and_save, training_args


def run(recipe: Recipe, overwrite: bool = False, resume: bool = False, on_done=None) -> dict:
    return run_task(recipe, lambda r, out, res: _train(r, out, res, on_done), overwrite, resume)


class VlmSetup(Setup):
    def load_processing(self):
        processor = load_processor(self.recipe.model)
        return processor, processor.tokenizer

    def unused_parameters(self) -> bool:
        """A trained vision tower has weights the features skip (LLaVA reads a layer before the last)."""
        tower = vision_tower_key(self.model)
        return bool(tower) and any(tower in n and p.requires_grad for n, p in self.model.named_parameters())

    def plan_rows(self) -> list[tuple[str, str]]:
        trainable = {}
        for part, names in (("language model", LANGUAGE_MODEL), ("vision tower", VISION_TOWER)):
            prefix = part_name(self.model, names)
            if prefix:
                counts = [
                    (p.numel(), p.requires_grad)
                    for n, p in self.model.named_parameters()
                    if f"{prefix}." in n or n.startswith(prefix)
                ]
                trained = sum(n for n, grad in counts if grad)
                trainable[part] = f"{report.human(trained)}/{report.human(sum(n for n, _ in counts))}"
        return [
            ("processor", type(self.processor).__name__),
            ("trainable by part", ", ".join(f"{k} {v}" for k, v in trainable.items())),
        ]


def _train(recipe: Recipe, out: Path, resume: bool, on_done=None) -> dict:
    from transformers import Trainer, TrainingArguments

    setup = VlmSetup(recipe, tokens_per_step=recipe.training.batch_size * recipe.data.max_length)
    pad = setup.tokenizer.pad_token_id
    train_collator = VisionCollator(pad, processor=setup.processor)
    eval_collator = VisionCollator(pad, processor=setup.processor)
    args = training_args(TrainingArguments, recipe, out, setup, include_num_input_tokens_seen="non_padding")
    callback = report.make_callback(out, train_collator)
    trainer = make_trainer(Trainer, setup, args, train_collator, eval_collator, callback)
    summary = train_and_save(trainer, setup, out, resume, callback, on_done)
    seconds = summary["train_seconds"]
    summary.update(
        final_eval_perplexity=report.perplexity(summary["final_eval_loss"])
        if summary["final_eval_loss"]
        else None,
        tokens_per_s=round(train_collator.real_tokens / seconds, 1) if seconds > 0 else None,
    )
    return summary
