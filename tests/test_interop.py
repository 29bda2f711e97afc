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
    code, _, err = run_cli(
        "train",
        SMOKE / "sft-lora.yaml",
        f"output.dir={run}",
        "training.max_steps=10",
        "data.template=alpaca",
        "output.merge=true",
    )
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

    ids = AutoTokenizer.from_pretrained(lora_run)(PROBE, return_tensors="pt", add_special_tokens=False)[
        "input_ids"
    ]
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


TRANSFORMERS_4 = ["transformers==4.57.6", "tokenizers==0.22.1", "huggingface_hub==0.36.0"]
LOGITS_4 = """
import sys, torch, transformers
from transformers import AutoModelForCausalLM
model_dir, dest = sys.argv[1:3]
assert transformers.__version__ == "4.57.6", transformers.__version__
model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
with torch.no_grad():
    torch.save(model(input_ids=torch.tensor([[5, 9, 70, 3, 11, 200, 17]])).logits, dest)
print(model.config.rope_theta, (model.config.rope_scaling or {}).get("rope_type"))
"""


@pytest.mark.slow
def test_a_non_default_rope_model_gives_the_same_logits_in_transformers_4_and_5(tmp_path):
    """merged/ of a base with Llama 3's rope (theta 500000, llama3 scaling), loaded by transformers 4.57 (installed
    into a folder of its own beside this environment's torch) and by transformers 5: the same logits."""
    import os
    import subprocess
    import sys

    from transformers import AutoModelForCausalLM

    target = tmp_path / "transformers4"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), *TRANSFORMERS_4],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if pip.returncode != 0:
        pytest.skip(
            f"transformers 4.57.6 could not be installed (needs the package registry): {pip.stderr[-300:]}"
        )
    run = tmp_path / "run"
    code, _, err = run_cli(
        "train",
        SMOKE / "sft-lora.yaml",
        "model.name=builtin:tiny-llama3",
        f"output.dir={run}",
        "training.max_steps=5",
        "output.merge=true",
    )
    assert code == 0, err
    old = subprocess.run(
        [sys.executable, "-c", LOGITS_4, str(run / "merged"), str(tmp_path / "old.pt")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(target)},
    )
    assert old.returncode == 0, old.stderr[-3000:]
    assert old.stdout.split() == ["500000.0", "llama3"]
    with torch.no_grad():
        new = (
            AutoModelForCausalLM.from_pretrained(run / "merged")
            .eval()(input_ids=torch.tensor([[5, 9, 70, 3, 11, 200, 17]]))
            .logits
        )
    torch.testing.assert_close(torch.load(tmp_path / "old.pt"), new, rtol=1e-5, atol=1e-5)
