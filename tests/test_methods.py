"""Every adaptation method trains, changes only what it should, and reloads in plain transformers/peft."""

import shutil

import pytest
import torch
from safetensors.torch import load_file

from ftcli.errors import RecipeError
from ftcli.models.builtin import builtin_path
from ftcli.recipe import load_recipe
from ftcli.tasks import sft
from tests.helpers import PROBE, RECIPES, pickle_only_adapter, pickle_only_model, probe_logits, reload_logits

SMOKE = RECIPES / "smoke"
BASE = str(builtin_path("builtin:tiny-llama"))


def train(recipe_name, out, *overrides):
    recipe = load_recipe(SMOKE / f"{recipe_name}.yaml", [f"output.dir={out}", *overrides])
    seen = {}

    def on_done(model, tokenizer):
        seen["logits"] = probe_logits(model, tokenizer)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        seen["model"] = base

    summary = sft.run(recipe, on_done=on_done)
    return summary, seen


def fresh_base_state():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(BASE).state_dict()


@pytest.mark.parametrize(
    "name, kind",
    [
        ("sft-full", "full"),
        ("sft-qlora", "qlora"),
        pytest.param("sft-qlora", "qlora8", marks=pytest.mark.slow),
        ("sft-prefix", "prefix"),
        ("sft-prompt", "prompt"),
        ("pretrain-lora", "lora"),
    ],
)
def test_method_trains_only_its_parameters_and_reloads(name, kind, tmp_path):
    out = tmp_path / "run"
    summary, seen = train(name, out, *(["method.bits=8"] if kind == "qlora8" else []))
    assert summary["status"] == "completed"
    assert summary["final_loss"] < 0.7 * summary["first_loss"], summary

    base = fresh_base_state()
    trained = {
        k.replace(".base_layer", ""): v for k, v in seen["model"].state_dict().items() if "lora_" not in k
    }
    if kind == "full":
        changed = [k for k in base if not torch.equal(base[k], trained[k])]
        assert len(changed) == len(base)  # every weight trained
    elif kind == "qlora":
        import bitsandbytes as bnb

        linear4 = [m for m in seen["model"].modules() if isinstance(m, bnb.nn.Linear4bit)]
        assert len(linear4) == 14 and all(m.weight.quant_type == "nf4" for m in linear4)
        assert {p.dtype for n, p in seen["model"].named_parameters() if "lora_" in n} == {torch.float32}
        # the 4-bit base and everything not adapted stays as loaded
        for key, value in base.items():
            if key in trained and trained[key].dtype == value.dtype and trained[key].shape == value.shape:
                assert torch.equal(value, trained[key]), key
    elif kind == "qlora8":
        import bitsandbytes as bnb

        assert len([m for m in seen["model"].modules() if isinstance(m, bnb.nn.Linear8bitLt)]) == 14
    else:  # lora / prefix / prompt: the base is frozen bitwise
        assert all(torch.equal(base[k], trained[k]) for k in base)

    fresh = reload_logits(out, kind, tmp_path / "logits.pt")
    torch.testing.assert_close(fresh, seen["logits"], rtol=1e-4, atol=1e-4)


def test_keys_to_finetune_trains_exactly_the_matched_parameters(tmp_path):
    summary, seen = train(
        "sft-full",
        tmp_path / "run",
        "method.keys_to_finetune=[lm_head,layers.1.mlp]",
        "training.max_steps=10",
    )
    base, trained = fresh_base_state(), seen["model"].state_dict()
    for key in base:
        matched = "lm_head" in key or "layers.1.mlp" in key
        assert torch.equal(base[key], trained[key]) != matched, key
    saved = load_file(tmp_path / "run" / "model.safetensors")
    assert torch.equal(saved["model.embed_tokens.weight"], base["model.embed_tokens.weight"])


def test_a_key_that_matches_nothing_is_an_error_with_real_names(tmp_path):
    with pytest.raises(RecipeError) as info:
        train("sft-full", tmp_path / "run", "method.keys_to_finetune=[vision_tower]")
    message = str(info.value)
    assert message.startswith("method.keys_to_finetune: 'vision_tower' matches no parameter")
    assert "model.layers.0.self_attn" in message or "model.embed_tokens.weight" in message


def test_lora_target_that_names_no_module_is_caught(tmp_path):
    with pytest.raises(RecipeError) as info:
        train("sft-lora", tmp_path / "run", "method.target_modules=[q_lin,v_lin]")
    assert "'q_lin' names no module of this model; its linear layers are" in str(info.value)
    assert "q_proj" in str(info.value)


@pytest.mark.parametrize("name", ["sft-lora", "sft-qlora"])
def test_merged_output_generates_like_base_plus_adapter(name, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "run"
    summary, _ = train(name, out, "output.merge=true", "training.max_steps=40")
    assert summary["outputs"]["merged"] == str(out / "merged")
    tok = AutoTokenizer.from_pretrained(out / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    assert not hasattr(merged.config, "quantization_config")
    if name == "sft-qlora":  # compare against the same dequantized base the merge used
        base = AutoModelForCausalLM.from_pretrained(BASE, quantization_config=_nf4(), device_map={"": "cpu"})
        base = base.dequantize()
    else:
        base = AutoModelForCausalLM.from_pretrained(BASE)
    adapted = PeftModel.from_pretrained(base, out).eval()
    ids = tok(
        [PROBE, "<|im_start|>user\nDescribe a red star.<|im_end|>\n<|im_start|>assistant\n"],
        add_special_tokens=False,
    )["input_ids"]
    for row in ids:
        x = torch.tensor([row])
        with torch.no_grad():
            torch.testing.assert_close(
                merged(input_ids=x).logits, adapted(input_ids=x).logits, rtol=1e-4, atol=1e-4
            )
        a = adapted.generate(input_ids=x, max_new_tokens=24, do_sample=False)
        b = merged.generate(input_ids=x, max_new_tokens=24, do_sample=False)
        assert torch.equal(a, b)


def _nf4():
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(tmp_path):
    steps = ["training.max_steps=20", "training.save_steps=10", "training.save_total_limit=5"]
    train("sft-full", tmp_path / "a", *steps)
    train("sft-full", tmp_path / "b", *steps)
    # "kill" run b after its first checkpoint: drop everything written after it, then --resume
    b = tmp_path / "b"
    shutil.rmtree(b / "checkpoint-20")
    (b / "model.safetensors").unlink()
    recipe = load_recipe(SMOKE / "sft-full.yaml", [f"output.dir={b}", *steps])
    summary = sft.run(recipe, resume=True)
    assert summary["status"] == "completed" and summary["steps"] == 20
    first, resumed = load_file(tmp_path / "a" / "model.safetensors"), load_file(b / "model.safetensors")
    for key in first:
        torch.testing.assert_close(resumed[key], first[key], rtol=1e-5, atol=1e-6)


def test_pickle_weights_load_when_the_recipe_allows_them(tmp_path):
    """Refused by default (tests/test_bad_input.py); with model.allow_pickle a pickled base and adapter train."""
    pickled = [f"model.name={pickle_only_model(tmp_path / 'base')}", "model.allow_pickle=true"]
    summary, _ = train("sft-full", tmp_path / "full", *pickled, "training.max_steps=2")
    assert summary["status"] == "completed" and summary["steps"] == 2
    adapter = [
        "method=lora",
        f"model.adapter={pickle_only_adapter(tmp_path / 'adapter')}",
        "model.allow_pickle=true",
    ]
    summary, _ = train("sft-lora", tmp_path / "lora", *adapter, "training.max_steps=2")
    assert summary["status"] == "completed" and summary["steps"] == 2
    assert (tmp_path / "full" / "model.safetensors").exists()  # what ftcli writes is safetensors all the same
    assert (tmp_path / "lora" / "adapter_model.safetensors").exists()


def test_resume_without_a_checkpoint_refuses(tmp_path):
    from ftcli.errors import UserError

    recipe = load_recipe(SMOKE / "sft-full.yaml", [f"output.dir={tmp_path / 'none'}"])
    with pytest.raises(UserError, match="no complete checkpoint"):
        sft.run(recipe, resume=True)


def test_continue_from_a_previous_run(tmp_path):
    """model.adapter continues an adapter; model.name takes a full run dir; an adapter dir as name is refused."""
    first, _ = train("sft-lora", tmp_path / "lora", "training.max_steps=30")
    again, _ = train(
        "sft-lora",
        tmp_path / "lora2",
        "method=lora",
        f"model.adapter={tmp_path / 'lora'}",
        "training.max_steps=5",
    )
    assert again["first_loss"] < 0.6 * first["first_loss"]  # it starts where the first run ended

    full, _ = train("sft-full", tmp_path / "full", "training.max_steps=30")
    chained, _ = train(
        "sft-lora", tmp_path / "chained", f"model.name={tmp_path / 'full'}", "training.max_steps=5"
    )
    assert chained["first_loss"] < 0.6 * full["first_loss"]

    with pytest.raises(RecipeError, match="holds a PEFT adapter, not full weights"):
        train("sft-lora", tmp_path / "bad", f"model.name={tmp_path / 'lora'}")


def test_qlora_gradients_are_unchanged_by_an_eval_pass():
    """bitsandbytes' CPU backend repacks 4-bit weights for inference at the first no-grad eval forward, after
    which backprop through them is wrong; ftcli's training guard keeps the training layout during a run."""
    from ftcli.models.bnb_cpu import training_layout
    from ftcli.models.load import load_base_model
    from ftcli.models.methods import apply_method

    recipe = load_recipe(SMOKE / "sft-qlora.yaml")
    model = apply_method(load_base_model(recipe), recipe)
    torch.manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # zero-initialized; make lora_A's gradient non-trivial
            param.data.normal_(0, 0.1)
    ids = torch.randint(0, 200, (2, 16))

    def grads():
        model.train()
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    with training_layout(model):
        before = grads()
        model.eval()
        with torch.no_grad():
            model(input_ids=ids)
        after = grads()
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=1e-5, atol=1e-7, msg=name)
