"""Outputs go where users carry them: every run, merge and export keeps the base's tokenizer files byte for byte,
a tokenizer_config.json that transformers 4.x loads, the chat template the run trained with, config.json with the
KV cache on, safetensors only; merged and exported weights give the adapter's logits."""

import json

import pytest
import torch

from ftcli.data.templates import NAMED_TEMPLATES
from ftcli.models.builtin import builtin_path
from tests.helpers import PROBE, RECIPES, run_cli

SMOKE = RECIPES / "smoke"


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A LoRA run that trained with the alpaca template (not the tokenizer's ChatML), merged and exported."""
    root = tmp_path_factory.mktemp("interop")
    run = root / "run"
    code, _, err = run_cli("train", SMOKE / "sft-lora.yaml", f"output.dir={run}", "training.max_steps=10",
                           "data.template=alpaca", "output.merge=true")  # fmt: skip
    assert code == 0, err
    code, _, err = run_cli("export", run, "--out", root / "f16", "--dtype", "f16")
    assert code == 0, err
    return run


def layout_ok(folder, template):
    from transformers import AutoTokenizer

    base = builtin_path("builtin:tiny-llama")
    assert (folder / "tokenizer.json").read_bytes() == (base / "tokenizer.json").read_bytes()
    assert (folder / "tokenizer_config.json").read_bytes() == (base / "tokenizer_config.json").read_bytes()
    config = json.loads((folder / "tokenizer_config.json").read_text())  # what transformers 4.x can read
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast" and "extra_special_tokens" not in config
    assert config["additional_special_tokens"] == ["<|im_start|>", "<|im_end|>"]
    assert (folder / "chat_template.jinja").read_text() == template
    assert AutoTokenizer.from_pretrained(folder).chat_template == template
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt"))


def test_run_merged_and_exported_dirs_keep_the_base_tokenizer_and_the_trained_template(lora_run):
    for folder in (lora_run, lora_run / "merged", lora_run.parent / "f16"):
        layout_ok(folder, NAMED_TEMPLATES["alpaca"])
    for folder in (lora_run / "merged", lora_run.parent / "f16"):
        config = json.loads((folder / "config.json").read_text())
        assert config["architectures"] == ["LlamaForCausalLM"] and config["use_cache"] is True
        assert "quantization_config" not in config
    assert json.loads((lora_run.parent / "f16" / "config.json").read_text())["dtype"] == "float16"


def test_merged_and_exported_weights_give_the_adapters_logits(lora_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = AutoTokenizer.from_pretrained(lora_run)(PROBE, return_tensors="pt", add_special_tokens=False)["input_ids"]
    base = AutoModelForCausalLM.from_pretrained(builtin_path("builtin:tiny-llama"))
    with torch.no_grad():
        adapted = PeftModel.from_pretrained(base, lora_run).eval()(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(lora_run / "merged").eval()(input_ids=ids).logits
        half = AutoModelForCausalLM.from_pretrained(lora_run.parent / "f16").eval()
        assert half.dtype == torch.float16
        exported = half.float()(input_ids=ids).logits
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(exported, adapted, rtol=2e-2, atol=2e-2)  # f16 rounding of the weights


def test_export_of_a_full_run_resaves_it_in_the_asked_dtype(tmp_path):
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    assert run_cli("train", SMOKE / "sft-full.yaml", f"output.dir={run}", "training.max_steps=3")[0] == 0
    code, out, err = run_cli("export", run, "--out", tmp_path / "bf16", "--dtype", "bf16", "--json")
    assert code == 0, err
    assert json.loads(out)["exported"] == str(tmp_path / "bf16")
    layout_ok(tmp_path / "bf16", (builtin_path("builtin:tiny-llama") / "chat_template.jinja").read_text())
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16")
    assert model.dtype == torch.bfloat16 and model.config.use_cache
    original = AutoModelForCausalLM.from_pretrained(run)
    for (name, a), (_, b) in zip(original.state_dict().items(), model.state_dict().items()):
        torch.testing.assert_close(a.to(torch.bfloat16), b, msg=name)


def test_export_refuses_what_it_cannot_write_and_never_overwrites(lora_run, tmp_path):
    code, _, err = run_cli("export", lora_run, "--out", lora_run.parent / "f16")
    assert code == 2 and "--overwrite" in err
    code, _, err = run_cli("export", lora_run, "--out", tmp_path / "x", "--dtype", "fp8")
    assert code == 2 and "--dtype fp8: use one of f32, f16, bf16" in err
