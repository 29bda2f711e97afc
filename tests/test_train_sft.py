"""The first slice end to end: LoRA SFT on builtin:tiny-llama, and its outputs in plain transformers/peft."""

import json

import pytest
import torch

from ftcli.models.builtin import builtin_path
from ftcli.recipe import load_recipe
from tests.helpers import PROBE, RECIPES, call_main, probe_logits, reload_logits

SMOKE = RECIPES / "smoke" / "sft-lora.yaml"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke") / "run"
    recipe = load_recipe(SMOKE, [f"output.dir={out}"])
    captured = {}

    def on_done(model, tokenizer):
        captured["logits"] = probe_logits(model, tokenizer)
        captured["base_state"] = {k: v.clone() for k, v in model.get_base_model().state_dict().items()}

    from ftcli.tasks import sft

    summary = sft.run(recipe, on_done=on_done)
    return out, summary, captured


def test_loss_falls_and_summary_is_complete(smoke_run):
    out, summary, _ = smoke_run
    assert summary["status"] == "completed"
    assert summary["final_loss"] < 0.5 * summary["first_loss"]
    assert summary["final_eval_loss"] is not None and summary["final_eval_perplexity"] > 1
    for key in (
        "steps",
        "tokens",
        "tokens_per_s",
        "padding_fraction",
        "step_time_s",
        "peak_memory_bytes",
        "train_seconds",
        "wall_time_s",
        "parameters",
    ):
        assert summary[key] is not None, key
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["status"] == "completed" and on_disk["final_loss"] == summary["final_loss"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_loss" in r for r in rows) and any("loss" in r for r in rows)
    assert (out / "loss.png").stat().st_size > 1000
    assert (out / "recipe.resolved.yaml").exists()


def test_base_weights_are_unchanged(smoke_run):
    from transformers import AutoModelForCausalLM

    _, _, captured = smoke_run
    base = AutoModelForCausalLM.from_pretrained(builtin_path("builtin:tiny-llama")).state_dict()
    trained = {k.replace(".base_layer", ""): v for k, v in captured["base_state"].items() if "lora_" not in k}
    assert set(base) == set(trained)
    assert all(torch.equal(base[k], trained[k]) for k in base)


def test_adapter_reloads_in_a_fresh_process_with_plain_peft(smoke_run, tmp_path):
    out, _, captured = smoke_run
    assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()
    assert (out / "chat_template.jinja").exists()
    fresh = reload_logits(out, "lora", tmp_path / "logits.pt")
    torch.testing.assert_close(fresh, captured["logits"], rtol=1e-5, atol=1e-5)


def test_trained_model_answers_and_stops(smoke_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _, _ = smoke_run
    tok = AutoTokenizer.from_pretrained(out)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(builtin_path("builtin:tiny-llama")), out
    )
    ids = tok(PROBE, return_tensors="pt", add_special_tokens=False)["input_ids"]
    generated = model.generate(input_ids=ids, max_new_tokens=60, do_sample=False)[0, ids.shape[1] :]
    text = tok.decode(generated)
    # it learned the answer's shape and to end its turn (the end-of-turn token was a label)
    assert text.startswith("The capital of") and "<|im_end|>" in text


def test_cli_refuses_a_non_empty_output_dir_and_keeps_stdout_clean(smoke_run, capsys):
    out, _, _ = smoke_run
    before = sorted(p.name for p in out.iterdir())
    assert call_main("train", SMOKE, f"output.dir={out}") == 2
    captured = capsys.readouterr()
    assert "not empty; pass --overwrite" in captured.err and captured.out == ""
    assert sorted(p.name for p in out.iterdir()) == before  # nothing touched


def test_cli_train_json_summary_on_stdout(tmp_path, capsys):
    code = call_main("train", SMOKE, f"output.dir={tmp_path / 'r'}", "training.max_steps=3", "--json")
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "completed" and summary["steps"] == 3
    assert summary["data"]["cache_hit"] is True  # the module's smoke run prepared the same data
