"""`ftcli align` with `task: grpo`: online RL on the recipe's prompts raises the held-out reward, rewards are built
from the recipe (match, regex, length, a reward run, the user's Python function), and the run is like any other
(infer, reload in peft with the same logits)."""

import json

import pytest
import torch

from ftcli.recipe import load_recipe
from ftcli.recipe.schema import LengthReward, MatchReward, ModelReward, RegexReward
from ftcli.tasks import grpo
from ftcli.tasks.rewards import Length, Match, Model, Regex, build_rewards
from tests.helpers import DATA, RECIPES, call_main, probe_logits, reload_logits

SMOKE = RECIPES / "smoke"
GRPO = SMOKE / "grpo-lora.yaml"
PERU = [{"role": "user", "content": "What is the capital of Peru?"}]


def rewards_recipe(tmp_path, *rewards):
    """The smoke GRPO recipe with other rewards, as a recipe file (rewards are a list)."""
    text = f"extends: {GRPO}\noutput:\n  dir: {tmp_path / 'run'}\nalign:\n  rewards: {json.dumps(list(rewards))}\n"
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_grpo_raises_the_held_out_reward_and_the_run_is_like_any_other(tmp_path, capsys):
    out, seen = tmp_path / "run", {}
    recipe = load_recipe(GRPO, [f"output.dir={out}"])
    summary = grpo.run(recipe, on_done=lambda model, tok: seen.update(logits=probe_logits(model, tok)))
    assert summary["status"] == "completed"
    # a 'z' is rare in a random model's answers and everywhere after: measured on held-out prompts, sampled
    assert summary["eval_reward_before"] < 0.3 and summary["eval_reward"] > 0.8, summary
    assert summary["final_reward"] > summary["first_reward"] and summary["final_reward_std"] >= 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "reward" in r]
    assert len(logged) >= 5 and all("reward_std" in r and "rewards/regex/mean" in r for r in logged)
    assert any("eval_reward" in r for r in rows)
    fresh = reload_logits(out, "lora", tmp_path / "logits.pt")
    torch.testing.assert_close(fresh, seen["logits"], rtol=1e-4, atol=1e-4)
    capsys.readouterr()
    assert call_main("infer", out, "-p", "What is the capital of Peru?", "--max-new-tokens", "16") == 0
    assert capsys.readouterr().out.strip()


def test_match_compares_extracted_and_normalized_answers():
    gsm8k = Match(MatchReward(pattern=r"####\s*(-?[\d,.]+)"))
    completions = [
        "so 3 + 4 = 7\n#### 7",
        "#### 8",
        "the answer is 7",
        [{"role": "assistant", "content": "#### 7."}],
    ]
    references = ["Natalia sold 3+4 = 7 clips.\n#### 7"] * 4
    assert gsm8k([None] * 4, completions, answer=references) == [1.0, 0.0, 0.0, 1.0]
    whole = Match(MatchReward())
    assert whole([None] * 3, ["  Lima. ", "lima", "Lima is it"], answer=["Lima"] * 3) == [1.0, 1.0, 0.0]
    exact = Match(MatchReward(normalize=False, column="city"))
    assert exact([None] * 2, ["Lima", "lima"], city=["Lima", "Lima"]) == [1.0, 0.0]


def test_match_with_an_optional_group_and_async_python_rewards_are_named_for_trl():
    import asyncio

    from ftcli.tasks.rewards import _named

    either = Match(MatchReward(pattern=r"answer: (\w+)|done"))
    assert either([None] * 2, ["answer: Lima", "done"], answer=["Lima", "done"]) == [1.0, 1.0]

    async def later(prompts, completions, **kwargs):
        return [1.0 for _ in completions]

    wrapped = _named(later, "later")
    assert wrapped.__name__ == "later" and asyncio.run(wrapped(prompts=[None], completions=["x"])) == [1.0]


def test_regex_and_length_rewards():
    search = Regex(RegexReward(pattern=r"<answer>.*</answer>"))
    full = Regex(RegexReward(pattern=r"<answer>.*</answer>", full=True))
    texts = ["x <answer>\n7</answer>", "<answer>7</answer>", "7"]
    assert search([None] * 3, texts) == [1.0, 1.0, 0.0]
    assert full([None] * 3, texts) == [0.0, 1.0, 0.0]
    length = Length(LengthReward(max_tokens=4))
    assert length([None] * 3, ["", "", ""], completion_ids=[[1] * 3, [1] * 4, [1] * 10]) == [0.0, 0.0, -1.5]


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reward") / "run"
    assert call_main("align", SMOKE / "reward-lora.yaml", f"output.dir={out}", "output.merge=false") == 0
    return out


def test_model_reward_scores_as_ftcli_infer_does(reward_run, tmp_path, capsys):
    score = Model(ModelReward(path=str(reward_run)), "cpu")
    answers = ["The capital of Peru is Lima.", "The capital of Peru is Oslo."]
    mine = score([PERU, PERU], [[{"role": "assistant", "content": a}] for a in answers])
    pairs = tmp_path / "pair.jsonl"
    pairs.write_text(json.dumps({"prompt": PERU[0]["content"], "chosen": answers[0], "rejected": answers[1]}))
    capsys.readouterr()
    assert call_main("infer", reward_run, "-i", pairs, "--json") == 0
    scored = json.loads(capsys.readouterr().out)
    assert mine == pytest.approx([scored["chosen_score"], scored["rejected_score"]], abs=1e-4)
    assert mine[0] > mine[1]


def test_rewards_combine_a_reward_run_a_python_function_and_a_match(reward_run, tmp_path):
    (tmp_path / "my_rewards.py").write_text(
        "def mentions_lima(prompts, completions, answer, **kwargs):\n"
        "    return [float('Lima' in (c if isinstance(c, str) else c[-1]['content'])) for c in completions]\n"
    )
    path = rewards_recipe(
        tmp_path,
        {"type": "model", "path": str(reward_run), "weight": 0.5},
        {"type": "python", "function": "my_rewards.py:mentions_lima"},
        {"type": "match"},
    )
    recipe = load_recipe(path, ["training.max_steps=2", "training.eval_steps=2"])
    assert (
        recipe.align.rewards[1].function == f"{tmp_path / 'my_rewards.py'}:mentions_lima"
    )  # next to the recipe
    functions, weights = build_rewards(recipe, "cpu")
    assert [f.__name__ for f in functions] == ["model", "mentions_lima", "match"] and weights == [
        0.5,
        1.0,
        1.0,
    ]
    summary = grpo.run(recipe)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for name in ("model", "mentions_lima", "match"):
        assert any(f"rewards/{name}/mean" in r for r in rows), name
    assert summary["status"] == "completed" and summary["eval_reward"] is not None


@pytest.mark.parametrize(
    "overrides, rewards, message",
    [
        ([], [], "align.rewards: GRPO needs at least one reward"),
        (
            ["training.batch_size=12"],
            None,
            "training.batch_size: 12 completions per batch is no whole number",
        ),
        ([], [{"type": "regex", "pattern": "("}], "align.rewards.0.pattern: not a valid regex"),
        (
            [],
            [{"type": "python", "function": "no_such_module_xyz:f"}],
            "align.rewards.0.function: cannot import",
        ),
        ([], [{"type": "model", "path": str(DATA)}], "align.rewards.0.path"),
        (["align.loss_type=sigmoid"], None, "'sigmoid' is not a GRPO loss of the installed TRL; it offers"),
        (["align.use_vllm=true"], None, "align.use_vllm: vLLM"),
        (["data.overlong=truncate"], None, "data.overlong: task grpo drops prompts"),
        (["method=prompt"], None, "task grpo trains with full, lora, qlora, not prompt"),
        (["data.train_on=all"], None, "data.train_on: not read here: task grpo learns from the completions"),
    ],
)
def test_grpo_refusals_name_the_key(overrides, rewards, message, tmp_path, capsys):
    path = GRPO if rewards is None else rewards_recipe(tmp_path, *rewards)
    assert call_main("align", path, f"output.dir={tmp_path / 'run'}", *overrides) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()  # refused before the run dir is made


def test_beta_zero_is_for_grpo_only(capsys):
    assert call_main("validate", SMOKE / "dpo-lora.yaml", "align.beta=0") == 2
    assert "align.beta: task dpo needs beta > 0" in capsys.readouterr().err


def test_full_fine_tuning_with_a_kl_term_scores_against_the_reference_ftcli_loaded(tmp_path):
    """TRL builds that reference itself from the policy's name: it gets the pinned revision and the safetensors
    rule ftcli loaded the policy with; adapters (the base with the adapter off) and beta 0 need none."""
    recipe = load_recipe(GRPO, ["method.type=full", "align.beta=0.04"])
    recipe.model.revision = "v1"  # as a hub model's recipe would pin it (a builtin has no revisions)
    assert grpo._reference_loading(recipe) == {
        "trust_remote_code": False,
        "revision": "v1",
        "use_safetensors": True,
    }
    assert grpo._reference_loading(load_recipe(GRPO, ["align.beta=0.04"])) is None
    assert grpo._reference_loading(load_recipe(GRPO, ["method.type=full"])) is None
    out = tmp_path / "run"
    overrides = ["method.type=full", "align.beta=0.04", "training.max_steps=2", "training.logging_steps=1"]
    summary = grpo.run(load_recipe(GRPO, [*overrides, "training.learning_rate=1e-5", f"output.dir={out}"]))
    assert summary["status"] == "completed"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("kl" in r for r in rows)  # the KL to the reference was computed
