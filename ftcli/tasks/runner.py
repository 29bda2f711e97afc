"""What every training task shares: the run lifecycle (run dir, frozen recipe, summary.json status), the model and
its method, TrainingArguments from the recipe, the plan table, the train/eval/save sequence and the summary.
Each objective module (sft, dpo, reward, kto, ...) only picks its TRL trainer, data layout and metrics."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from pathlib import Path

from ftcli import dispatch, redact, report
from ftcli.data.prepare import PreparedData, prepare_data
from ftcli.data.templates import resolve_template
from ftcli.errors import RecipeError, UserError, environment_error
from ftcli.models.hardware import cast_trained, check_hardware, device_of, precision
from ftcli.models.load import load_base_model, load_tokenizer, model_source, training_config
from ftcli.models.memory import choose_gradient_checkpointing
from ftcli.models.methods import apply_method, parameter_counts
from ftcli.models.save import save_model_outputs
from ftcli.recipe.registry import METHODS, TASKS
from ftcli.recipe.schema import Recipe
from ftcli.run_dir import (
    FINAL_STAGING,
    clear_staging,
    freeze_recipe,
    newest_checkpoint,
    open_run_dir,
    publish,
    run_dir_of,
)
from ftcli.tasks.guards import Diverged, Stopped, make_guards, stop_on_signals
from ftcli.upstream import trainer_class


def run_task(
    recipe: Recipe, train: Callable[[Recipe, Path, bool], dict], overwrite=False, resume=False
) -> dict:
    """Open and lock the run dir, record the recipe, and keep summary.json's status true however the run ends:
    completed, failed (a user error, a loss or weights gone NaN), interrupted (Ctrl-C, SIGTERM, at any stage) or
    crashed (an internal error, its message recorded). In an accelerate worker the launching command has opened
    the dir already, and only the main worker writes."""
    lock = None
    if dispatch.in_worker():
        out = run_dir_of(recipe)
    else:
        out, lock = open_run_dir(recipe, overwrite=overwrite, resume=resume)
        freeze_recipe(recipe, out)
    write = dispatch.is_main_process()
    summary: dict = {
        "status": "running",
        "task": recipe.task,
        "method": recipe.method.type,
        "run_dir": str(out),
    }
    started = time.time()
    try:
        with stop_on_signals():
            if write:
                report.write_summary(out / "summary.json", summary)
            summary.update(train(recipe, out, resume))
            summary["status"] = "completed"
    except (KeyboardInterrupt, Stopped) as exc:
        summary.update(status="interrupted", exit_code=getattr(exc, "exit_code", 130))
        raise
    except BaseException as exc:
        user = isinstance(exc, UserError) or environment_error(exc) is not None  # a full disk is no crash
        line = environment_error(exc) or (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        summary.update(
            status="failed" if user else "crashed",
            error=redact.mask(line),
            exit_code=getattr(exc, "exit_code", 2 if user else 1),
        )
        raise
    finally:
        summary["wall_time_s"] = round(time.time() - started, 2)
        try:
            if write:
                report.write_summary(out / "summary.json", summary)
        finally:
            if lock is not None:
                lock.release()
    return summary


class Setup:
    """Tokenizer, prepared data and the model with its method applied, plus the choices made on the way."""

    def __init__(self, recipe: Recipe, tokens_per_step: int):
        check_hardware(recipe)
        self.recipe = recipe
        self.device = device_of(recipe)
        self.processor, self.tokenizer = self.load_processing()
        with _main_process_first(
            recipe
        ):  # workers: the main one tokenizes into the cache, the others then read it
            self.data: PreparedData = prepare_data(
                recipe, self.tokenizer, log=report.phase, processor=self.processor
            )
        report.print_prepare_stats(self.data.stats, self.data.cache_dir, self.data.cache_hit)
        import transformers

        # Seed before any weight is created (score heads, LoRA A, soft prompts), so one process and N workers
        # start from identical weights however much randomness data preparation used.
        transformers.set_seed(recipe.training.seed)
        report.phase(f"loading {recipe.model.name} ({recipe.method.type}) on the {self.device}")
        self.model = self.build_model(tokens_per_step)
        training_config(self.model)
        self.total, self.trainable = parameter_counts(self.model)
        if self.trainable == 0:
            raise RecipeError(
                "no parameter is trainable; check method.keys_to_finetune / keys_to_freeze", key="method"
            )
        self.has_eval = self.data.eval is not None and len(self.data.eval) > 0
        self.precision = precision(recipe)
        self.learning_rate = (
            recipe.training.learning_rate
        )  # resolved from task and method when the recipe loaded

    def load_processing(self):
        """(processor, tokenizer): a vision-language model's processor, None for a text model, and the
        tokenizer."""
        return None, load_tokenizer(self.recipe.model)

    def build_model(self, tokens_per_step: int):
        """The base model with the recipe's method applied; sets the gradient checkpointing choice."""
        recipe = self.recipe
        model = load_base_model(recipe)
        model = apply_method(model, recipe, model_source(recipe.model))
        if not METHODS[
            recipe.method.type
        ].checkpointing:  # e.g. a prefix lives in the KV cache, which it cannot replay
            self.checkpointing, self.checkpointing_why = (
                False,
                f"off: {recipe.method.type} tuning cannot use it",
            )
        else:  # estimated on the adapted model: only what it trains has gradients and optimizer state
            setting = recipe.training.gradient_checkpointing
            self.checkpointing, self.checkpointing_why = choose_gradient_checkpointing(
                setting, model, tokens_per_step, self.device
            )
        return model

    def plan_rows(self) -> list[tuple[str, str]]:
        """Task-specific rows for the plan table."""
        return []

    def save_outputs(self, model, out: Path, weights: bool) -> dict:
        return save_model_outputs(model, self.tokenizer, self.recipe, out, weights, self.trained_template())

    def unused_parameters(self) -> bool:
        """Whether some trainable weight may get no gradient in a step, which DDP must then look for."""
        return False

    def trained_template(self) -> str | None:
        """The chat template the run trained with, where the recipe chose one over the tokenizer's own."""
        template = self.recipe.data.template
        return resolve_template(template, self.tokenizer) if template is not None else None


def training_args(config_cls, recipe: Recipe, out: Path, setup: Setup, **extra):
    """The recipe's training block as a TRL config (a TrainingArguments subclass)."""

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
        use_cpu=device_of(recipe) == "cpu",
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
        # a text model uses every trainable weight each step, and the check costs a pass over the graph
        ddp_find_unused_parameters=setup.unused_parameters(),
        logging_nan_inf_filter=False,  # a NaN loss must show (and stop the run), not be averaged away
        **extra,
    )


def make_trainer(trainer_cls, setup: Setup, args, train_collator, eval_collator, callback, *mixins):
    """A `trainer_cls` (with ftcli's atomic checkpoints and `mixins`) on the setup's model and data, whose eval
    batches go through their own collator, so the train collator's token counts (tokens/s, padding fraction)
    stay train-only."""

    class Trainer(trainer_class(trainer_cls, *mixins)):
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


def quiet_stdout(trainer) -> None:
    """transformers' PrinterCallback prints raw log dicts to stdout, which is for results."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)


def train_and_save(trainer, setup: Setup, out: Path, resume: bool, callback, on_done=None) -> dict:
    """Plan table, train (from the newest checkpoint with --resume), final eval, outputs, loss.png; the summary
    fields every task reports."""
    import torch

    recipe = setup.recipe
    setup.weights_dtype = cast_trained(
        trainer.model, recipe
    )  # after the trainer: TRL casts QLoRA adapters to bf16
    if trainer.is_deepspeed_enabled and setup.precision != "fp32":
        # DeepSpeed's 16-bit mode keeps the fp32 masters in its optimizer and computes with (and saves) 16-bit
        # copies, where DDP and FSDP autocast the fp32 weights: losses agree within 16-bit rounding (tested)
        setup.weights_dtype += f" masters, {setup.precision} copies computed and saved (DeepSpeed)"
    quiet_stdout(trainer)
    trainer.add_callback(make_guards())
    if trainer.args.should_save:  # what saves killed in an earlier attempt left (before any worker writes)
        clear_staging(out)
    _print_plan(setup, trainer)
    checkpoint = newest_checkpoint(out, report=report.phase) if resume else None
    with numerics(setup, trainer.model):
        start = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        train_seconds = time.perf_counter() - start
        final_eval = _final_eval(trainer) if setup.has_eval else {}
    _check_finite(trainer, result.training_loss)

    # The final outputs are written whole into a staging dir, then moved into place: a kill or a full disk midway
    # never leaves a truncated adapter or weights file that looks like a result.
    stage = out / FINAL_STAGING
    report.phase(f"saving to {out}")
    if dispatch.in_worker():  # every rank takes part (DeepSpeed/FSDP gather the weights); the main one writes
        trainer.save_model(str(stage))
    saved = {}
    if dispatch.is_main_process():
        saved = setup.save_outputs(trainer.model, stage, weights=not dispatch.in_worker())
        saved = publish(stage, out, saved)
    if on_done is not None:
        on_done(trainer.model, setup.tokenizer)
    if dispatch.is_main_process():
        report.plot_losses(out / "metrics.jsonl", out / "loss.png")
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    # online RL: the reward's mean and std over each logged step's samples
    rewards = [r for r in trainer.state.log_history if "reward" in r]
    evals = [r["eval_loss"] for r in trainer.state.log_history if "eval_loss" in r]
    summary = {
        "steps": trainer.state.global_step,
        "epochs": round(trainer.state.epoch or 0, 4),
        "first_loss": round(losses[0], 4) if losses else None,
        "final_loss": round(losses[-1], 4) if losses else None,
        "train_loss": result.training_loss,
        **(
            {
                f"{when}_{key}": round(rewards[i][key], 4)
                for when, i in (("first", 0), ("final", -1))
                for key in ("reward", "reward_std")
                if key in rewards[i]
            }
            if rewards
            else {}
        ),
        "final_eval_loss": final_eval.get("eval_loss"),
        "best_eval_loss": min(evals) if evals else None,
        "train_seconds": round(train_seconds, 2),
        "step_time_s": report.step_time_percentiles(callback.step_times),
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if setup.device == "cuda" else _peak_rss(),
        "peak_memory_kind": "cuda_allocated" if setup.device == "cuda" else "process_rss",
        "parameters": {"total": setup.total, "trainable": setup.trainable},
        "gradient_checkpointing": {"enabled": setup.checkpointing, "reason": setup.checkpointing_why},
        "precision": setup.precision,
        "device": setup.device,
        "weights_dtype": setup.weights_dtype,
        "learning_rate": setup.learning_rate,
        "data": {
            "cache_hit": setup.data.cache_hit,
            "cache_dir": setup.data.cache_dir,
            "packed": setup.data.packed,
            "train_rows": len(setup.data.train),
            "eval_rows": len(setup.data.eval) if setup.has_eval else 0,
        },
        "outputs": saved,
        "final_eval": {
            k.removeprefix("eval_"): v
            for k, v in final_eval.items()
            if isinstance(v, (int, float)) and not k.endswith(("_runtime", "_per_second"))
        },
    }
    report.console.print(
        f"[green]done[/] {summary['steps']} steps in {train_seconds:.1f}s, loss {summary['first_loss']} -> "
        f"{summary['final_loss']}"
        + (f", reward {summary['first_reward']} -> {summary['final_reward']}" if rewards else "")
        + (f", eval {summary['final_eval_loss']:.4f}" if final_eval else "")
        + f"  {out}",
        soft_wrap=True,
    )
    return summary


def _check_finite(trainer, training_loss: float) -> None:
    """A run whose loss or weights became NaN/inf has failed, whatever the logged losses showed (the loss guard
    sees only logged steps): nothing is saved as a result; the checkpoints before stay."""
    import torch

    step = trainer.state.global_step
    if training_loss is not None and not math.isfinite(training_loss):
        raise Diverged(
            f"the training loss is {training_loss} after step {step}; lower training.learning_rate or check "
            "the data (earlier checkpoints are kept)"
        )
    for name, param in trainer.model.named_parameters():
        if param.requires_grad and param.numel() and not torch.isfinite(param.detach()).all():
            raise Diverged(
                f"the trained weights hold NaN/inf after step {step} ({name}); lower "
                "training.learning_rate or set training.max_grad_norm (earlier checkpoints are kept)"
            )


def _main_process_first(recipe: Recipe):
    if not dispatch.in_worker():
        return contextlib.nullcontext()
    from accelerate import PartialState

    return PartialState(cpu=device_of(recipe) == "cpu").main_process_first()


def _checkpointing_args(config_cls, enabled: bool) -> dict:
    """transformers renamed gradient_checkpointing to activation_checkpointing in 5.x; use whichever it has."""
    name = "activation" if "activation_checkpointing" in config_cls.__dataclass_fields__ else "gradient"
    return {
        f"{name}_checkpointing": enabled,
        f"{name}_checkpointing_kwargs": {"use_reentrant": False} if enabled else None,
    }


def numerics(setup: Setup, model):
    """What the training loop runs under besides autocast. On a CPU, bitsandbytes' inference-only 4-bit layout is
    held off (see models/bnb_cpu.py). Under 16-bit autocast peft would cast each LoRA layer's input to its fp32
    weights (a full-size copy per adapted layer, saved for backward, that autocast casts right back): the input
    stays as it is and autocast runs the adapter's matmul in 16 bits from the fp32 weights."""
    recipe = setup.recipe
    stack = contextlib.ExitStack()
    method = METHODS[recipe.method.type]
    if method.quantized and recipe.method.bits == 4 and setup.device == "cpu":
        from ftcli.models.bnb_cpu import training_layout

        stack.enter_context(training_layout(model))
    if method.peft_type == "LORA" and setup.precision in ("bf16", "fp16"):
        from peft.helpers import disable_input_dtype_casting

        stack.enter_context(disable_input_dtype_casting(model))
    return stack


def _print_plan(setup: Setup, trainer) -> None:
    recipe, data, t = setup.recipe, setup.data, setup.recipe.training
    effective = t.batch_size * t.grad_accum * trainer.args.world_size
    rows = [
        ("model", recipe.model.name + (" (trust_remote_code!)" if recipe.model.trust_remote_code else "")),
        ("task / method", f"{recipe.task} / {recipe.method.type}"),
        (
            "parameters",
            f"{report.human(setup.total)} total, {report.human(setup.trainable)} trainable "
            f"({100 * setup.trainable / max(setup.total, 1):.2f}%)",
        ),
        (
            "data",
            f"{len(data.train)} train "
            + (
                "pairs"
                if "chosen_ids" in data.train.column_names
                else "prompts"
                if TASKS[recipe.task].prompts
                else "rows"
            )
            + (" (packed)" if data.packed else "")
            + (f", {len(data.eval)} eval" if data.eval is not None else "")
            + f", {report.human(data.stats['train']['tokens'])} tokens",
        ),
        *setup.plan_rows(),
        ("steps", f"{trainer.state.max_steps or _planned_steps(trainer)} (effective batch {effective})"),
        ("learning rate", f"{setup.learning_rate:g} ({t.lr_scheduler})"),
        ("precision", f"{setup.precision} on {setup.device} (trained weights {setup.weights_dtype})"),
        ("gradient checkpointing", setup.checkpointing_why),
        ("output", str(trainer.args.output_dir)),
    ]
    report.print_table("plan", rows)


def _final_eval(trainer) -> dict:
    """The trained model's held-out metrics: those of the evaluation at the last step when there was one (same
    weights, same data: the same numbers; every worker holds the same history, so all skip it together), else a
    new evaluation."""
    step = trainer.state.global_step
    for row in reversed(trainer.state.log_history):
        if row.get("step") == step and "eval_loss" in row:
            return {k: v for k, v in row.items() if k != "step"}
    report.phase("evaluating on the held-out data")
    return trainer.evaluate()


def _planned_steps(trainer) -> int:
    args = trainer.args
    if args.max_steps and args.max_steps > 0:
        return args.max_steps
    batches = math.ceil(len(trainer.train_dataset) / (args.per_device_train_batch_size * args.world_size))
    return math.ceil(batches / args.gradient_accumulation_steps) * math.ceil(args.num_train_epochs)


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
