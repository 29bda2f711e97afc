"""`task: sft` and `task: pretrain` — a thin wiring of TRL's SFTTrainer around ftcli's prepared (tokenized,
label-masked, packed) data. Both objectives are next-token prediction; they differ only in the data format and
which tokens carry the loss, which the data layer has already decided."""

from __future__ import annotations

import time
from pathlib import Path

from ftcli import report
from ftcli.data.collate import PackedCollator, PaddedCollator
from ftcli.data.prepare import prepare_data
from ftcli.errors import RecipeError, UserError
from ftcli.models.load import compute_dtype, load_base_model, load_tokenizer, model_source
from ftcli.models.memory import choose_gradient_checkpointing
from ftcli.models.methods import apply_method, parameter_counts
from ftcli.models.save import save_model_outputs
from ftcli.recipe.schema import BNB_OPTIMIZERS, Recipe
from ftcli.run_dir import freeze_recipe, newest_checkpoint, open_run_dir


def run(recipe: Recipe, overwrite: bool = False, resume: bool = False, on_done=None) -> dict:
    """Train and save. `on_done(model, tokenizer)` is called with the trained model before it is released."""
    out = open_run_dir(recipe, overwrite=overwrite, resume=resume)
    freeze_recipe(recipe, out)
    summary: dict = {"status": "running", "task": recipe.task, "method": recipe.method.type, "run_dir": str(out)}
    report.write_json(out / "summary.json", summary)
    started = time.time()
    try:
        summary.update(_train(recipe, out, resume, on_done))
        summary["status"] = "completed"
    except KeyboardInterrupt:
        summary["status"] = "interrupted"
        raise
    except BaseException as exc:
        summary.update(status="failed", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise
    finally:
        summary["wall_time_s"] = round(time.time() - started, 2)
        report.write_json(out / "summary.json", summary)
    return summary


def _train(recipe: Recipe, out: Path, resume: bool, on_done=None) -> dict:
    import torch
    from trl import SFTConfig

    _check_hardware(recipe)
    tokenizer = load_tokenizer(recipe.model)
    prepared = prepare_data(recipe, tokenizer, log=lambda m: report.console.print(f"[dim]{m}[/]"))
    report.print_prepare_stats(prepared.stats, prepared.cache_dir, prepared.cache_hit)

    model = load_base_model(recipe)
    model.config.use_cache = False  # a KV cache during training hides packed-row boundaries from transformers
    tokens_per_step = recipe.training.batch_size * recipe.data.max_length
    if recipe.method.type == "prefix":  # the learned prefix lives in the KV cache, which checkpointing cannot replay
        checkpointing, why = False, "off: prefix tuning cannot use it"
    else:
        setting = recipe.training.gradient_checkpointing
        checkpointing, why = choose_gradient_checkpointing(setting, model, tokens_per_step)
    model = apply_method(model, recipe, model_source(recipe.model), checkpointing)
    total, trainable = parameter_counts(model)
    if trainable == 0:
        raise RecipeError("no parameter is trainable; check method.keys_to_finetune / keys_to_freeze", key="method")

    collator_cls = PackedCollator if prepared.packed else PaddedCollator
    train_collator, eval_collator = collator_cls(tokenizer.pad_token_id), collator_cls(tokenizer.pad_token_id)
    t = recipe.training
    lr = t.default_learning_rate(recipe.method.type)
    has_eval = prepared.eval is not None and len(prepared.eval) > 0
    precision = _precision(recipe)
    args = SFTConfig(
        output_dir=str(out),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=lr,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio or t.warmup_steps,
        weight_decay=t.weight_decay,
        optim=t.optimizer,
        max_grad_norm=t.max_grad_norm,
        **_checkpointing_args(SFTConfig, checkpointing),
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        eval_strategy=("steps" if t.eval_steps else "epoch") if has_eval else "no",
        eval_steps=t.eval_steps,
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        save_total_limit=t.save_total_limit,
        report_to=[r for r in t.report_to if r != "none"] or "none",
        disable_tqdm=True,
        log_level="warning",
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True},
        max_length=None,
        packing=False,  # already packed, without cross-row attention, by ftcli's data layer
    )
    callback = report.make_callback(out, train_collator)
    trainer = _build_trainer(
        eval_collator,
        model=model,
        args=args,
        data_collator=train_collator,
        train_dataset=prepared.train,
        eval_dataset=prepared.eval if has_eval else None,
        processing_class=tokenizer,
        callbacks=[callback],
    )
    if recipe.method.type == "qlora":
        _adapter_to_compute_dtype(trainer.model, recipe)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts to stdout, which is for results
    _print_plan(recipe, model, total, trainable, prepared, trainer, lr, precision, checkpointing, why)

    checkpoint = newest_checkpoint(out) if resume else None
    with _quantized_training_guard(recipe, trainer.model):
        start = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        train_seconds = time.perf_counter() - start
        final_eval = trainer.evaluate() if has_eval else {}

    saved = save_model_outputs(trainer.model, tokenizer, recipe, out)
    if on_done is not None:
        on_done(trainer.model, tokenizer)
    report.plot_losses(out / "metrics.jsonl", out / "loss.png")
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    evals = [r["eval_loss"] for r in trainer.state.log_history if "eval_loss" in r]
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else _peak_rss()
    real, padded = train_collator.real_tokens, train_collator.padded_tokens
    summary = {
        "steps": trainer.state.global_step,
        "epochs": round(trainer.state.epoch or 0, 4),
        "first_loss": round(losses[0], 4) if losses else None,
        "final_loss": round(losses[-1], 4) if losses else None,
        "train_loss": result.training_loss,
        "final_eval_loss": final_eval.get("eval_loss"),
        "best_eval_loss": min(evals) if evals else None,
        "final_eval_perplexity": report.perplexity(final_eval["eval_loss"]) if final_eval else None,
        "tokens": trainer.state.num_input_tokens_seen,
        "train_seconds": round(train_seconds, 2),
        "tokens_per_s": round(real / train_seconds, 1) if train_seconds > 0 else None,
        "padding_fraction": round(1 - real / padded, 4) if padded else None,
        "step_time_s": report.step_time_percentiles(callback.step_times),
        "peak_memory_bytes": peak,
        "peak_memory_kind": "cuda_allocated" if torch.cuda.is_available() else "process_rss",
        "parameters": {"total": total, "trainable": trainable},
        "gradient_checkpointing": {"enabled": checkpointing, "reason": why},
        "precision": precision,
        "learning_rate": lr,
        "data": {"cache_hit": prepared.cache_hit, "cache_dir": prepared.cache_dir, "packed": prepared.packed,
                 "train_rows": len(prepared.train), "eval_rows": len(prepared.eval) if has_eval else 0},
        "outputs": saved,
    }  # fmt: skip
    report.console.print(
        f"[green]done[/] {summary['steps']} steps in {train_seconds:.1f}s, loss {summary['first_loss']} -> "
        f"{summary['final_loss']}" + (f", eval {summary['final_eval_loss']:.4f}" if final_eval else "") + f"  {out}"
    )
    return summary


def _build_trainer(eval_collator, **kwargs):
    """An SFTTrainer whose eval batches go through their own collator, so token counts stay train-only."""
    from trl import SFTTrainer

    class Trainer(SFTTrainer):
        def get_eval_dataloader(self, eval_dataset=None):
            train_collator = self.data_collator
            self.data_collator = eval_collator
            try:
                return super().get_eval_dataloader(eval_dataset)
            finally:
                self.data_collator = train_collator

    return Trainer(**kwargs)


def _quantized_training_guard(recipe: Recipe, model):
    import contextlib

    import torch

    if recipe.method.type == "qlora" and recipe.method.bits == 4 and not torch.cuda.is_available():
        from ftcli.models.bnb_cpu import training_layout

        return training_layout(model)
    return contextlib.nullcontext()


def _adapter_to_compute_dtype(model, recipe: Recipe) -> None:
    """TRL casts QLoRA adapter weights to bf16 (the paper's GPU setting) whatever the compute dtype. Where compute
    is fp32 (CPUs, GPUs without bf16) that only loses precision, and the saved bf16 adapter then reloads upcast to
    fp32 and no longer gives the trained model's logits; keep adapters in the compute dtype instead."""
    from ftcli.models.load import quantization_config

    dtype = getattr(quantization_config(recipe), "bnb_4bit_compute_dtype", None)
    if dtype is None or recipe.method.bits == 8:
        dtype = compute_dtype(recipe)
    for name, param in model.named_parameters():
        if param.requires_grad and "lora_magnitude_vector" not in name:
            param.data = param.data.to(dtype)


def _checkpointing_args(config_cls, enabled: bool) -> dict:
    """transformers renamed gradient_checkpointing to activation_checkpointing in 5.x; use whichever it has."""
    name = "activation" if "activation_checkpointing" in config_cls.__dataclass_fields__ else "gradient"
    return {f"{name}_checkpointing": enabled,
            f"{name}_checkpointing_kwargs": {"use_reentrant": False} if enabled else None}  # fmt: skip


def _precision(recipe: Recipe) -> str:
    import torch

    choice = recipe.training.precision
    if choice == "auto":
        dtype = compute_dtype(recipe)
        return "bf16" if dtype == torch.bfloat16 else "fp16" if dtype == torch.float16 else "fp32"
    return choice


def _check_hardware(recipe: Recipe) -> None:
    import torch

    cuda = torch.cuda.is_available()
    if recipe.training.precision == "fp16" and not cuda:
        raise RecipeError("fp16 mixed precision needs a CUDA GPU; use fp32 or bf16 on a CPU", key="training.precision")
    if recipe.training.precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise RecipeError("this GPU has no bf16; use fp16", key="training.precision")
    if recipe.training.optimizer in BNB_OPTIMIZERS and not cuda:
        raise RecipeError(
            f"{recipe.training.optimizer} is a bitsandbytes CUDA optimizer; on a CPU set training.optimizer: "
            "adamw_torch (ftcli does not swap it silently)",
            key="training.optimizer",
        )
    if recipe.launch.num_processes > 1:
        raise UserError("launch.num_processes > 1: multi-process dispatch is not available in this version yet")


def _print_plan(recipe, model, total, trainable, prepared, trainer, lr, precision, checkpointing, why):
    t = recipe.training
    effective = t.batch_size * t.grad_accum * trainer.args.world_size
    rows = [
        ("model", recipe.model.name + (" (trust_remote_code!)" if recipe.model.trust_remote_code else "")),
        ("task / method", f"{recipe.task} / {recipe.method.type}"),
        ("parameters", f"{report.human(total)} total, {report.human(trainable)} trainable "
                       f"({100 * trainable / max(total, 1):.2f}%)"),
        ("data", f"{len(prepared.train)} train rows" + (" (packed)" if prepared.packed else "")
                 + (f", {len(prepared.eval)} eval rows" if prepared.eval is not None else "")
                 + f", {report.human(prepared.stats['train']['tokens'])} tokens"),
        ("steps", f"{trainer.state.max_steps or _planned_steps(trainer)} (effective batch {effective})"),
        ("learning rate", f"{lr:g} ({t.lr_scheduler})"),
        ("precision", precision),
        ("gradient checkpointing", why),
        ("output", str(trainer.args.output_dir)),
    ]  # fmt: skip
    report.print_table("plan", rows)


def _planned_steps(trainer) -> int:
    import math

    args = trainer.args
    if args.max_steps and args.max_steps > 0:
        return args.max_steps
    batches = math.ceil(len(trainer.train_dataset) / (args.per_device_train_batch_size * args.world_size))
    return math.ceil(batches / args.gradient_accumulation_steps) * math.ceil(args.num_train_epochs)


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
