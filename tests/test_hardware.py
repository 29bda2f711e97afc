"""Device and dtype choices (models/hardware.py): one answer for every command, fp32 master weights under 16-bit
autocast, and refusals of what the machine cannot run. Runs on the CPU: its bf16 autocast takes the same code paths
as a GPU's (the GPU itself: tests/test_gpu.py)."""

import pytest
import torch

from ftcli.errors import RecipeError
from ftcli.models.hardware import compute_dtype, precision, resolve_device, trained_dtype
from ftcli.recipe import load_recipe
from ftcli.tasks import sft
from tests.helpers import RECIPES, call_main

SMOKE = RECIPES / "smoke"


def recipe(name="sft-lora", *overrides):
    return load_recipe(SMOKE / f"{name}.yaml", list(overrides))


def test_auto_is_the_cpu_here_and_asking_for_a_missing_device_names_the_key():
    assert resolve_device("auto") == "cpu"  # the suite hides GPUs (tests/conftest.py)
    with pytest.raises(RecipeError, match="no CUDA GPU is visible") as info:
        resolve_device("cuda")
    assert info.value.key == "launch.device"


@pytest.mark.parametrize(
    "overrides, compute, mixed, trained",
    [
        ([], torch.float32, "fp32", torch.float32),
        (["training.precision=bf16"], torch.bfloat16, "bf16", torch.float32),
        (["model.dtype=bfloat16"], torch.bfloat16, "bf16", torch.float32),
        (
            ["model.dtype=bfloat16", "method=full"],
            torch.bfloat16,
            "bf16",
            torch.bfloat16,
        ),  # pure bf16, asked for
        (["training.precision=bf16", "method=full"], torch.bfloat16, "bf16", torch.float32),  # master weights
    ],
)
def test_compute_precision_and_trained_dtypes(overrides, compute, mixed, trained):
    r = recipe("sft-lora", *overrides)
    assert (compute_dtype(r), precision(r), trained_dtype(r)) == (compute, mixed, trained)


@pytest.mark.parametrize("name", ["sft-lora", "sft-full", "sft-qlora"])
def test_bf16_autocast_trains_fp32_master_weights_over_a_bf16_base(tmp_path, name, monkeypatch):
    """What a GPU run does, on the CPU's bf16 autocast: frozen weights in bf16, trained ones fp32; LoRA layers keep
    their input as it is while autocast runs (no fp32 copy per layer) and get peft's casting back afterwards; a
    QLoRA model's embeddings, head and norms stay bf16 (no fp32 upcast)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    seen, casts = {}, []
    original = BaseTunerLayer._cast_input_dtype

    def counting(self, x, dtype):
        if x is not None and x.dtype != dtype and getattr(self, "cast_input_dtype_enabled", True):
            casts.append(x.dtype)
        return original(self, x, dtype)

    monkeypatch.setattr(BaseTunerLayer, "_cast_input_dtype", counting)

    def on_done(model, tokenizer):
        from peft.tuners.tuners_utils import BaseTunerLayer

        seen["trained"] = {p.dtype for p in model.parameters() if p.requires_grad}
        seen["frozen"] = {
            p.dtype for n, p in model.named_parameters() if not p.requires_grad and p.is_floating_point()
        }
        seen["casting"] = {
            m.cast_input_dtype_enabled for m in model.modules() if isinstance(m, BaseTunerLayer)
        }

    r = recipe(name, f"output.dir={tmp_path / 'run'}", "training.precision=bf16", "training.max_steps=12")
    summary = sft.run(r, on_done=on_done)
    assert summary["status"] == "completed" and summary["precision"] == "bf16"
    assert summary["weights_dtype"] == "float32" and seen["trained"] == {torch.float32}
    assert summary["final_loss"] < summary["first_loss"]
    if name != "sft-full":
        assert seen["frozen"] == {torch.bfloat16}
        assert seen["casting"] == {True}  # restored after training
    assert casts == []  # not one layer input was copied up to fp32 while training


def test_launch_refusals_and_the_dry_run_says_why_it_runs_one_process(tmp_path, capsys):
    code = call_main("train", SMOKE / "sft-lora.yaml", "launch.device=cuda", f"output.dir={tmp_path / 'run'}")
    assert code == 2 and "launch.device: no CUDA GPU is visible here" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert call_main("train", RECIPES / "distributed" / "qwen2.5-14b-full-fsdp.yaml", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "one process on the cpu" in out and "launch.num_processes: auto found no GPU" in out
    assert "launch.strategy fsdp is not used" in out
