"""Shared helpers for the tests."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
DATA = RECIPES / "data"

# `launch:` overrides that put one recipe on each distributed engine
ENGINES = {
    "ddp": [],
    "fsdp": ["launch.strategy=fsdp"],
    "zero2": ["launch.strategy=deepspeed", "launch.deepspeed.zero_stage=2"],
    "zero3": ["launch.strategy=deepspeed", "launch.deepspeed.zero_stage=3"],
}


def logged_losses(run_dir: Path) -> list[float]:
    """The training losses a run logged, in step order (its metrics.jsonl)."""
    import json

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def run_cli(*args, env=None, cwd=None, input=None, timeout=600):
    """Run ftcli in a fresh process: returns (exit code, stdout, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "ftcli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        input=input,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    return proc.returncode, proc.stdout, proc.stderr


HEAVY = ("torch", "transformers", "datasets", "peft", "trl", "lm_eval")


def imported_after(*args, cwd=None) -> tuple[int, str, set]:
    """Run ftcli in a fresh process: (exit code, stderr, the heavy libraries it imported on the way)."""
    code = (
        "import sys\nfrom ftcli.cli import main\ncode = 0\n"
        f"try:\n    main({[str(a) for a in args]!r})\nexcept SystemExit as exc:\n    code = exc.code or 0\n"
        f"print('MODULES:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))\nsys.exit(code)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd)
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("MODULES:"), proc.stdout + proc.stderr
    return proc.returncode, proc.stderr, {m for m in line.removeprefix("MODULES:").split(",") if m}


def call_main(*args):
    """Run ftcli in this process: returns the exit code (stdout/stderr via capsys)."""
    from ftcli.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return exc.code or 0
    return 0


def write_recipe(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# A chat prompt every trained smoke model is probed with.
PROBE = "<|im_start|>user\nWhat is the capital of Peru?<|im_end|>\n<|im_start|>assistant\n"

# Loads a run dir in plain transformers/peft (no ftcli) and saves its logits on PROBE.
RELOAD_SCRIPT = """
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
out, kind, base_dir, probe, dest = sys.argv[1:6]
tok = AutoTokenizer.from_pretrained(out)
if kind == "full":
    model = AutoModelForCausalLM.from_pretrained(out)
else:
    from peft import PeftModel
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=torch.float32) if kind == "qlora" else None
    q = BitsAndBytesConfig(load_in_8bit=True) if kind == "qlora8" else q
    base = AutoModelForCausalLM.from_pretrained(base_dir, quantization_config=q, device_map={"": "cpu"} if q else None)
    model = PeftModel.from_pretrained(base, out)
model.eval()
ids = tok(probe, return_tensors="pt", add_special_tokens=False)["input_ids"]
with torch.no_grad():
    torch.save(model(input_ids=ids).logits[0].float(), dest)
"""


def probe_logits(model, tokenizer):
    """Logits of `model` on PROBE, in eval mode."""
    import torch

    ids = tokenizer(PROBE, return_tensors="pt", add_special_tokens=False)["input_ids"]
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits[0].float()


def reload_logits(run_dir: Path, kind: str, dest: Path):
    """Logits on PROBE of `run_dir` reloaded in a fresh process with plain transformers/peft."""
    import torch

    from ftcli.models.builtin import builtin_path

    base = builtin_path("builtin:tiny-llama")
    subprocess.run(
        [sys.executable, "-c", RELOAD_SCRIPT, str(run_dir), kind, str(base), PROBE, str(dest)],
        check=True,
        capture_output=True,
    )
    return torch.load(dest)


def pickle_only_model(dest: Path) -> Path:
    """builtin:tiny-llama with its weights as pytorch_model.bin (pickle) instead of model.safetensors."""
    import shutil

    import torch
    from safetensors.torch import load_file

    from ftcli.models.builtin import builtin_path

    base = builtin_path("builtin:tiny-llama")
    shutil.copytree(base, dest, ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(load_file(base / "model.safetensors"), dest / "pytorch_model.bin")
    return dest


def pickle_only_adapter(dest: Path) -> Path:
    """A LoRA adapter for builtin:tiny-llama saved as adapter_model.bin (pickle) instead of safetensors."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from ftcli.models.builtin import builtin_path

    base = AutoModelForCausalLM.from_pretrained(builtin_path("builtin:tiny-llama"))
    get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(dest)
    torch.save(load_file(dest / "adapter_model.safetensors"), dest / "adapter_model.bin")
    (dest / "adapter_model.safetensors").unlink()
    return dest
