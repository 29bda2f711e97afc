"""What every training task shares: the run lifecycle (run dir, frozen recipe, summary.json status), the model and
its method, TrainingArguments from the recipe, the plan table, the train/eval/save sequence and the summary.
Each objective module (sft, dpo, reward, kto, ...) only picks its TRL trainer, data layout and metrics."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from pathlib import Path

from ftcli import dispatch, report
from ftcli.data.prepare import PreparedData, prepare_data
from ftcli.data.templates import resolve_template
from ftcli.errors import RecipeError
from ftcli.models.load import compute_dtype, load_base_model, load_tokenizer, model_source, training_config
from ftcli.models.memory import choose_gradient_checkpointing
from ftcli.models.methods import apply_method, parameter_counts
from ftcli.models.save import save_model_outputs
from ftcli.recipe.schema import BNB_OPTIMIZERS, Recipe
from ftcli.run_dir import freeze_recipe, newest_checkpoint, open_run_dir, run_dir_of
from ftcli.tasks.guards import Stopped, atomic_checkpoints, make_guards


def run_task(recipe: Recipe, train: Callable[[Recipe, Path, bool], dict], overwrite=False, resume=False) -> dict:
    """Open the run dir, record the recipe, and keep summary.json's status true whatever happens. In an
    accelerate worker the launching command has opened the dir already, and only the main worker writes."""
    if dispatch.in_worker():
        out = run_dir_of(recipe)
    else:
        out = open_run_dir(recipe, overwrite=overwrite, resume=resume)
        freeze_recipe(recipe, out)
    write = dispatch.is_main_process()
    summary: dict = {"status": "running", "task": recipe.task, "method": recipe.method.type, "run_dir": str(out)}
    if write:
        report.write_json(out / "summary.json", summary)
    started = time.time()
    try:
        summary.update(train(recipe, out, resume))
        summary["status"] = "completed"
    except (KeyboardInterrupt, Stopped):
        summary["status"] = "interrupted"
        raise
    except BaseException as exc:
        summary.update(status="failed", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                       exit_code=getattr(exc, "exit_code", 1))  # fmt: skip
        raise
    finally:
        summary["wall_time_s"] = round(time.time() - started, 2)
        if write:
            report.write_json(out / "summary.json", summary)
    return summary


class Setup:
    """Tokenizer, prepared data and the model with its method applied, plus the choices made on the way."""

    def __init__(self, recipe: Recipe, tokens_per_step: int):
        check_hardware(recipe)
        self.recipe = recipe
        self.tokenizer = load_tokenizer(recipe.model)
        with _main_process_first():  # workers: the main one tokenizes into the cache, the others then read it
            self.data: PreparedData = prepare_data(recipe, self.tokenizer,
                                                   log=lambda m: report.console.print(f"[dim]{m}[/]"))  # fmt: skip
        report.print_prepare_stats(self.data.stats, self.data.cache_dir, self.data.cache_hit)
        import transformers

        # Seed before any weight is created (score heads, LoRA A, soft prompts), so one process and N workers
        # start from identical weights however much randomness data preparation used.
        transformers.set_seed(recipe.training.seed)
        self.model = self.build_model(tokens_per_step)
        training_config(self.model)
        self.total, self.trainable = parameter_counts(self.model)
        if self.trainable == 0:
            raise RecipeError("no parameter is trainable; check method.keys_to_finetune / keys_to_freeze", key="method")
        self.has_eval = self.data.eval is not None and len(self.data.eval) > 0
        self.precision = precision(recipe)
        self.learning_rate = recipe.training.default_learning_rate(recipe.method.type, recipe.task)

    def build_model(self, tokens_per_step: int):
        """The base model with the recipe's method applied; sets the gradient checkpointing choice."""
        recipe = self.recipe
        model = load_base_model(recipe)
        if recipe.task == "reward" and model.config.pad_token_id is None:
            model.config.pad_token_id = self.tokenizer.pad_token_id  # the score is read at the last non-pad token
        if recipe.method.type == "prefix":  # its learned prefix lives in the KV cache, which checkpointing cannot replay
            self.checkpointing, self.checkpointing_why = False, "off: prefix tuning cannot use it"
        else:
            setting = recipe.training.gradient_checkpointing
            self.checkpointing, self.checkpointing_why = choose_gradient_checkpointing(setting, model, tokens_per_step)
        return apply_method(model, recipe, model_source(recipe.model), self.checkpointing)

    def plan_rows(self) -> list[tuple[str, str]]:
        """Task-specific rows for the plan table."""
        return []

    def save_outputs(self, model, out: Path, weights: bool) -> dict:
        return save_model_outputs(model, self.tokenizer, self.recipe, out, weights, self.trained_template())

    def trained_template(self) -> str | None:
        """The chat template the run trained with, where the recipe chose one over the tokenizer's own."""
        template = self.recipe.data.template
        return resolve_template(template, self.tokenizer) if template is not None else None


def training_args(config_cls, recipe: Recipe, out: Path, setup: Setup, **extra):
    """The recipe's training block as a TRL config (a TrainingArguments subclass)."""
    import torch

    t = recipe.training
    return config_cls(
        output_dir=str(out),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=setup.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio or t.warmup_steps,
        weight_decay=t.weight_decay,
        optim=t.optimizer,
        max_grad_norm=t.max_grad_norm,
        **_checkpointing_args(config_cls, setup.checkpointing),
        bf16=setup.precision == "bf16",
        fp16=setup.precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        eval_strategy=("steps" if t.eval_steps else "epoch") if setup.has_eval else "no",
        eval_steps=t.eval_steps,
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        save_total_limit=t.save_total_limit,
        report_to=[r for r in t.report_to if r != "none"] or "none",
        disable_tqdm=True,
        log_level="warning",
        remove_unused_columns=False,
        ddp_find_unused_parameters=False,  # every trainable weight is used each step; the check costs a pass
        logging_nan_inf_filter=False,  # a NaN loss must show (and stop the run), not be averaged away
        **extra,
    )


def make_trainer(trainer_cls, setup: Setup, args, train_collator, eval_collator, callback):
    """A `trainer_cls` on the setup's model and data whose eval batches go through their own collator, so the
    train collator's token counts (tokens/s, padding fraction) stay train-only."""

    class Trainer(trainer_cls):
        def get_eval_dataloader(self, eval_dataset=None):
            self.data_collator = eval_collator
            try:
                return super().get_eval_dataloader(eval_dataset)
            finally:
                self.data_collator = train_collator

    return Trainer(
        model=setup.model,
        args=args,
        data_collator=train_collator,
        train_dataset=setup.data.train,
        eval_dataset=setup.data.eval if setup.has_eval else None,
        processing_class=setup.tokenizer,
        callbacks=[callback],
    )


def train_and_save(trainer, setup: Setup, out: Path, resume: bool, callback, on_done=None) -> dict:
    """Plan table, train (from the newest checkpoint with --resume), final eval, outputs, loss.png; the summary
    fields every task reports."""
    import torch
    from transformers.trainer_callback import PrinterCallback

    recipe = setup.recipe
    if recipe.method.type == "qlora":
        _adapter_to_compute_dtype(trainer.model, recipe)
    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts to stdout, which is for results
    trainer.add_callback(make_guards())
    atomic_checkpoints(trainer)  # a save killed midway leaves no checkpoint-N
    _print_plan(setup, trainer)
    checkpoint = newest_checkpoint(out) if resume else None
    with _quantized_training_guard(recipe, trainer.model):
        start = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        train_seconds = time.perf_counter() - start
        final_eval = trainer.evaluate() if setup.has_eval else {}

    if dispatch.in_worker():  # every rank takes part (DeepSpeed/FSDP gather the weights); the main one writes
        trainer.save_model(str(out))
    saved = {}
    if dispatch.is_main_process():
        saved = setup.save_outputs(trainer.model, out, weights=not dispatch.in_worker())
    if on_done is not None:
        on_done(trainer.model, setup.tokenizer)
    if dispatch.is_main_process():
        report.plot_losses(out / "metrics.jsonl", out / "loss.png")
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    evals = [r["eval_loss"] for r in trainer.state.log_history if "eval_loss" in r]
    summary = {
        "steps": trainer.state.global_step,
        "epochs": round(trainer.state.epoch or 0, 4),
        "first_loss": round(losses[0], 4) if losses else None,
        "final_loss": round(losses[-1], 4) if losses else None,
        "train_loss": result.training_loss,
        "final_eval_loss": final_eval.get("eval_loss"),
        "best_eval_loss": min(evals) if evals else None,
        "train_seconds": round(train_seconds, 2),
        "step_time_s": report.step_time_percentiles(callback.step_times),
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else _peak_rss(),
        "peak_memory_kind": "cuda_allocated" if torch.cuda.is_available() else "process_rss",
        "parameters": {"total": setup.total, "trainable": setup.trainable},
        "gradient_checkpointing": {"enabled": setup.checkpointing, "reason": setup.checkpointing_why},
        "precision": setup.precision,
        "learning_rate": setup.learning_rate,
        "data": {"cache_hit": setup.data.cache_hit, "cache_dir": setup.data.cache_dir, "packed": setup.data.packed,
                 "train_rows": len(setup.data.train), "eval_rows": len(setup.data.eval) if setup.has_eval else 0},
        "outputs": saved,
        "final_eval": {k.removeprefix("eval_"): v for k, v in final_eval.items()
                       if isinstance(v, (int, float)) and not k.endswith(("_runtime", "_per_second"))},
    }  # fmt: skip
    report.console.print(
        f"[green]done[/] {summary['steps']} steps in {train_seconds:.1f}s, loss {summary['first_loss']} -> "
        f"{summary['final_loss']}" + (f", eval {summary['final_eval_loss']:.4f}" if final_eval else "") + f"  {out}"
    )
    return summary


def _main_process_first():
    if not dispatch.in_worker():
        return contextlib.nullcontext()
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available()).main_process_first()


def precision(recipe: Recipe) -> str:
    import torch

    choice = recipe.training.precision
    if choice == "auto":
        dtype = compute_dtype(recipe)
        return "bf16" if dtype == torch.bfloat16 else "fp16" if dtype == torch.float16 else "fp32"
    return choice


def check_hardware(recipe: Recipe) -> None:
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


def _checkpointing_args(config_cls, enabled: bool) -> dict:
    """transformers renamed gradient_checkpointing to activation_checkpointing in 5.x; use whichever it has."""
    name = "activation" if "activation_checkpointing" in config_cls.__dataclass_fields__ else "gradient"
    return {f"{name}_checkpointing": enabled,
            f"{name}_checkpointing_kwargs": {"use_reentrant": False} if enabled else None}  # fmt: skip


def _quantized_training_guard(recipe: Recipe, model):
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


def _print_plan(setup: Setup, trainer) -> None:
    recipe, data, t = setup.recipe, setup.data, setup.recipe.training
    effective = t.batch_size * t.grad_accum * trainer.args.world_size
    rows = [
        ("model", recipe.model.name + (" (trust_remote_code!)" if recipe.model.trust_remote_code else "")),
        ("task / method", f"{recipe.task} / {recipe.method.type}"),
        ("parameters", f"{report.human(setup.total)} total, {report.human(setup.trainable)} trainable "
                       f"({100 * setup.trainable / max(setup.total, 1):.2f}%)"),
        ("data", f"{len(data.train)} train {'pairs' if 'chosen_ids' in data.train.column_names else 'rows'}"
                 + (" (packed)" if data.packed else "")
                 + (f", {len(data.eval)} eval" if data.eval is not None else "")
                 + f", {report.human(data.stats['train']['tokens'])} tokens"),
        *setup.plan_rows(),
        ("steps", f"{trainer.state.max_steps or _planned_steps(trainer)} (effective batch {effective})"),
        ("learning rate", f"{setup.learning_rate:g} ({t.lr_scheduler})"),
        ("precision", setup.precision),
        ("gradient checkpointing", setup.checkpointing_why),
        ("output", str(trainer.args.output_dir)),
    ]  # fmt: skip
    report.print_table("plan", rows)


def _planned_steps(trainer) -> int:
    args = trainer.args
    if args.max_steps and args.max_steps > 0:
        return args.max_steps
    batches = math.ceil(len(trainer.train_dataset) / (args.per_device_train_batch_size * args.world_size))
    return math.ceil(batches / args.gradient_accumulation_steps) * math.ceil(args.num_train_epochs)


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
