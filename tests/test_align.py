"""`ftcli align`: DPO / KTO / reward models learn a held-out preference, and their outputs reload in plain
transformers/peft with the same numbers."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from ftcli import launch
from ftcli.models.builtin import builtin_path
from ftcli.recipe import load_recipe
from ftcli.recipe.registry import TASKS, load
from tests.helpers import RECIPES, call_main, probe_logits, reload_logits

SMOKE = RECIPES / "smoke"


def align(name, out, *overrides, on_done=None):
    recipe = load_recipe(SMOKE / f"{name}.yaml", [f"output.dir={out}", *overrides])
    if on_done is None:
        return launch.run("align", recipe, False, False)
    return load(TASKS[recipe.task].trainer)(recipe, on_done=on_done)


def test_dpo_lora_learns_the_held_out_preference_and_reloads(tmp_path):
    out, seen = tmp_path / "run", {}
    summary = align("dpo-lora", out, on_done=lambda model, tok: seen.update(logits=probe_logits(model, tok)))
    assert summary["status"] == "completed"
    assert summary["eval_accuracy"] >= 0.8 and summary["eval_margin"] > 0, summary
    assert summary["final_loss"] < 0.5 * summary["first_loss"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for key in (
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "eval_rewards/accuracies",
    ):
        assert any(key in r for r in rows), key
    assert (out / "loss.png").stat().st_size > 0
    assert not (out / "ref").exists()  # TRL's frozen reference adapter is not part of the result
    fresh = reload_logits(out, "lora", tmp_path / "logits.pt")
    torch.testing.assert_close(fresh, seen["logits"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["orpo-lora", "simpo-lora", "cpo-lora"])
def test_reference_free_preference_tasks_learn_the_held_out_preference_and_reload(name, tmp_path, capsys):
    out, seen = tmp_path / "run", {}
    summary = align(name, out, on_done=lambda model, tok: seen.update(logits=probe_logits(model, tok)))
    assert summary["status"] == "completed" and summary["final_loss"] < 0.5 * summary["first_loss"]
    assert summary["eval_accuracy"] >= 0.8 and summary["eval_margin"] > 0, summary
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_rewards/accuracies" in r for r in rows)
    fresh = reload_logits(out, "lora", tmp_path / "logits.pt")
    torch.testing.assert_close(fresh, seen["logits"], rtol=1e-4, atol=1e-4)
    capsys.readouterr()
    assert call_main("infer", out, "-p", "What is the capital of Peru?", "--max-new-tokens", "24") == 0
    assert capsys.readouterr().out.strip()


def test_cpo_refuses_losses_it_does_not_run_and_simpo_keys_elsewhere(tmp_path, capsys):
    run = f"output.dir={tmp_path / 'r'}"
    assert call_main("align", SMOKE / "cpo-lora.yaml", "align.loss_type=simpo", run) == 2
    assert "align.loss_type: SimPO is `task: simpo`" in capsys.readouterr().err
    assert call_main("align", SMOKE / "cpo-lora.yaml", "align.loss_type=robust", run) == 2
    assert (
        "'robust' is not a CPO loss of the installed TRL; it offers sigmoid, hinge, ipo"
        in capsys.readouterr().err
    )
    assert call_main("validate", SMOKE / "dpo-lora.yaml", "align.simpo_gamma=1.0") == 2
    assert "align.simpo_gamma: not read here" in capsys.readouterr().err
    assert call_main("validate", SMOKE / "orpo-lora.yaml", "align.cpo_alpha=1.0") == 2
    assert "align.cpo_alpha: not read here" in capsys.readouterr().err
    assert call_main("validate", SMOKE / "simpo-lora.yaml", "method=prompt") == 2
    assert "task simpo trains with full, lora, qlora, prefix, not prompt" in capsys.readouterr().err


SCORE_SCRIPT = """
import sys, torch
from peft import AutoPeftModelForSequenceClassification
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model_dir, dest = sys.argv[1:3]
tok = AutoTokenizer.from_pretrained(model_dir)
if sys.argv[3:] == ["adapter"]:  # as the README says: one label, and the pad id where the base names none
    model = AutoPeftModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, pad_token_id=tok.pad_token_id)
else:
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
model.eval()
texts = [tok.apply_chat_template([{"role": "user", "content": "What is the capital of Peru?"},
                                  {"role": "assistant", "content": f"The capital of Peru is {c}."}], tokenize=False)
         for c in ("Lima", "Oslo")]
with torch.no_grad():  # one padded batch: needs the pad id in config.json
    torch.save(model(**tok(texts, return_tensors="pt", padding=True)).logits[:, 0], dest)
"""


def scores(model, tokenizer):
    texts = [
        tokenizer.apply_chat_template(
            [
                {"role": "user", "content": "What is the capital of Peru?"},
                {"role": "assistant", "content": f"The capital of Peru is {c}."},
            ],
            tokenize=False,
        )
        for c in ("Lima", "Oslo")
    ]
    model.eval()
    with torch.no_grad():
        return torch.cat([model(**tokenizer(t, return_tensors="pt")).logits[0] for t in texts])


def base_without_pad_id(dest):
    """The builtin base with no pad id in its config, as Llama 3 and Mistral ship."""
    shutil.copytree(builtin_path("builtin:tiny-llama"), dest)
    config = json.loads((dest / "config.json").read_text())
    del config["pad_token_id"]
    (dest / "config.json").write_text(json.dumps(config))
    return dest


@pytest.mark.parametrize("name", ["reward-lora", "reward-full"])
def test_reward_model_ranks_held_out_pairs_and_reloads_with_the_same_scores(name, tmp_path):
    out, seen = tmp_path / "run", {}
    base = base_without_pad_id(tmp_path / "base")
    summary = align(
        name, out, f"model.name={base}", on_done=lambda model, tok: seen.update(scores=scores(model, tok))
    )
    assert summary["eval_accuracy"] >= 0.8 and summary["eval_margin"] > 0, summary
    model_dir = out / "merged" if name == "reward-lora" else out  # lora: merged with output.merge
    assert json.loads((model_dir / "config.json").read_text())["pad_token_id"] == 258  # <|pad|>
    subprocess.run([sys.executable, "-c", SCORE_SCRIPT, str(model_dir), str(tmp_path / "s.pt")], check=True)
    fresh = torch.load(tmp_path / "s.pt")
    torch.testing.assert_close(fresh, seen["scores"], rtol=1e-4, atol=1e-4)
    assert fresh[0] > fresh[1]  # the right capital scores higher
    if name == "reward-lora":  # the run dir itself: base + adapter with its trained score head
        subprocess.run([sys.executable, "-c", SCORE_SCRIPT, out, tmp_path / "a.pt", "adapter"], check=True)
        torch.testing.assert_close(torch.load(tmp_path / "a.pt"), seen["scores"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("dpo-full", []),
        ("dpo-qlora", []),
        ("reward-lora", ["method=qlora"]),
        ("dpo-lora", ["method=prompt", "training.learning_rate=1e-2"]),
        (
            "dpo-lora",
            ["align.precompute_ref_log_probs=true", "align.loss_type=ipo", "training.learning_rate=1e-3"],
        ),
    ],
)
def test_other_methods_improve_too(name, overrides, tmp_path):
    summary = align(name, tmp_path / "run", "output.merge=false", *overrides)
    assert summary["status"] == "completed"
    assert summary["eval_accuracy"] >= 0.8 and summary["eval_margin"] > 0, summary


@pytest.mark.slow
def test_kto_separates_desirable_from_undesirable(tmp_path):
    summary = align("kto-lora", tmp_path / "run")
    assert summary["final_eval"]["rewards/margins"] > 0.5
    assert summary["final_eval_loss"] < 0.45  # 0.5 = no separation at the start
    assert summary["final_loss"] < 0.7 * summary["first_loss"]


def test_sft_then_dpo_chain_uses_the_sft_model_as_reference(tmp_path):
    sft_run = tmp_path / "sft"
    assert call_main("train", SMOKE / "sft-lora.yaml", f"output.dir={sft_run}", "training.max_steps=30") == 0
    summary = align("dpo-from-sft", tmp_path / "dpo", f"model.adapter={sft_run}", "training.epochs=1")
    # The policy starts as the SFT adapter and the reference is that same SFT model: the first loss is log 2.
    assert summary["first_loss"] == pytest.approx(0.6931, abs=1e-3)
    assert summary["status"] == "completed" and summary["eval_margin"] > 0


def test_unknown_dpo_loss_names_the_key_and_the_choices(tmp_path, capsys):
    assert (
        call_main("align", SMOKE / "dpo-lora.yaml", "align.loss_type=dpoo", f"output.dir={tmp_path / 'r'}")
        == 2
    )
    err = capsys.readouterr().err
    assert "align.loss_type: 'dpoo' is not a DPO loss of the installed TRL" in err and "ipo" in err


def test_train_refuses_alignment_tasks(capsys):
    assert call_main("train", SMOKE / "dpo-lora.yaml") == 2
    assert "task dpo is run by `ftcli align`" in capsys.readouterr().err
