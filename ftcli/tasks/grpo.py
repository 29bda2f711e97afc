"""`task: grpo` — TRL's GRPOTrainer: online RL on the recipe's prompts. For each prompt the policy samples
align.num_generations completions; align.rewards score them (weighted and summed); each completion's advantage is
its reward against its group's. Held-out prompts are scored the same way before and after training.

Prompts are conversations when the model has a chat template (TRL renders them with the template ftcli resolved,
set on the tokenizer), raw text otherwise (data/prompts.py)."""

from __future__ import annotations

from pathlib import Path

from ftcli import report
from ftcli.errors import RecipeError
from ftcli.recipe.registry import METHODS
from ftcli.recipe.schema import Recipe
from ftcli.tasks.rewards import build_rewards, check_rewards
from ftcli.tasks.runner import Setup, numerics, quiet_stdout, run_task, train_and_save, training_args
from ftcli.upstream import grpo_loss_types, trainer_class


def run(recipe: Recipe, overwrite: bool = False, resume: bool = False, on_done=None) -> dict:
    return run_task(recipe, lambda r, out, res: _train(r, out, res, on_done), overwrite, resume)


def check(recipe: Recipe) -> None:
    """Before the run dir is made: the loss the installed TRL offers, vLLM when asked for, the rewards' code."""
    offered = grpo_loss_types()
    if offered and recipe.align.loss_type not in offered:
        raise RecipeError(
            f"{recipe.align.loss_type!r} is not a GRPO loss of the installed TRL; it offers {', '.join(offered)}",
            key="align.loss_type",
        )
    if recipe.align.use_vllm is True:
        why = _no_vllm(recipe)
        if why:
            raise RecipeError(f"{why}; set it to auto or false", key="align.use_vllm")
    check_rewards(recipe)


def _no_vllm(recipe: Recipe) -> str | None:
    from importlib.util import find_spec

    from ftcli.models.hardware import device_of

    if find_spec("vllm") is None:
        return "vLLM is not installed (pip install vllm)"
    if device_of(recipe) != "cuda":
        return "vLLM generates on CUDA GPUs only"
    return None


class GrpoSetup(Setup):
    def plan_rows(self) -> list[tuple[str, str]]:
        a, batch = self.recipe.align, self.recipe.training.batch_size
        rewards = " + ".join(f"{r.weight:g} x {_describe(r)}" for r in a.rewards)
        kl = (
            f"beta {a.beta:g} (reference: the starting model)"
            if a.beta
            else "none (beta 0: no reference model)"
        )
        return [
            (
                "sampling",
                f"{a.num_generations} completions per prompt, {batch // a.num_generations} prompts per batch, up "
                f"to {a.max_completion_length} tokens at temperature {a.temperature:g}, with "
                + ("vLLM (colocated)" if self.vllm else "transformers generate"),
            ),
            ("rewards", rewards),
            ("loss / KL", f"{a.loss_type} / {kl}"),
        ]


def _reference_loading(recipe: Recipe) -> dict | None:
    """Full fine-tuning with a KL term: TRL loads the reference itself, from the policy's name; these make it load
    the same weights ftcli loaded (the pinned revision, remote code if allowed, safetensors unless
    model.allow_pickle)."""
    if not METHODS[recipe.method.type].trains_base or recipe.align.beta == 0:
        return None
    spec = recipe.model
    return {
        "trust_remote_code": spec.trust_remote_code,
        **({"revision": spec.revision} if spec.revision else {}),
        **({} if spec.allow_pickle else {"use_safetensors": True}),
    }


def _describe(reward) -> str:
    if reward.type == "match":
        return f"match({reward.column}{', ' + repr(reward.pattern) if reward.pattern else ''})"
    if reward.type == "regex":
        return f"regex({reward.pattern!r})"
    if reward.type == "length":
        return f"length(<= {reward.max_tokens} tokens)"
    return f"{reward.type}({reward.path if reward.type == 'model' else reward.function})"


def _train(recipe: Recipe, out: Path, resume: bool, on_done=None) -> dict:
    from trl import GRPOConfig, GRPOTrainer

    a = recipe.align
    setup = GrpoSetup(recipe, tokens_per_step=recipe.training.batch_size * recipe.data.max_length)
    setup.vllm = a.use_vllm is True or (a.use_vllm == "auto" and _no_vllm(recipe) is None)
    template = setup.trained_template() or getattr(setup.tokenizer, "chat_template", None)
    if template is not None:  # TRL renders conversational prompts with the tokenizer's template
        setup.tokenizer.chat_template = template
    functions, weights = build_rewards(recipe, setup.device)
    args = training_args(
        GRPOConfig,
        recipe,
        out,
        setup,
        num_generations=a.num_generations,
        max_completion_length=a.max_completion_length,
        temperature=a.temperature,
        beta=a.beta,
        loss_type=a.loss_type,
        reward_weights=weights,
        use_vllm=setup.vllm,
        **({"vllm_mode": "colocate"} if setup.vllm else {}),
        model_init_kwargs=_reference_loading(recipe),
    )
    callback = report.make_callback(out)
    trainer = trainer_class(GRPOTrainer)(
        model=setup.model,
        reward_funcs=functions,
        args=args,
        train_dataset=setup.data.train,
        eval_dataset=setup.data.eval if setup.has_eval else None,
        processing_class=setup.tokenizer,
        callbacks=[callback],
    )
    quiet_stdout(trainer)
    before = {}
    if setup.has_eval and not resume:  # the starting model on the held-out prompts, sampled the same way
        report.phase("scoring the starting model on the held-out prompts")
        with numerics(
            setup, trainer.model
        ):  # as training runs (QLoRA on a CPU: bitsandbytes' layout held off)
            before = trainer.evaluate()
    summary = train_and_save(trainer, setup, out, resume, callback, on_done)
    final = summary["final_eval"]
    summary.update(
        eval_reward_before=before.get("eval_reward"),
        eval_reward=final.get("reward"),
        eval_reward_std=final.get("reward_std"),
    )
    if before:
        report.console.print(
            f"held-out reward {before['eval_reward']:.4f} -> {final.get('reward', float('nan')):.4f}",
            soft_wrap=True,
        )
    return summary
