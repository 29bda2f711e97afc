"""Multi-process runs go through accelerate-launched workers: two CPU workers (gloo) train distinct halves of
each global batch and end with the weights of one process; dry runs show the exact launch for each strategy."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.helpers import ENGINES, RECIPES, call_main, logged_losses, run_cli

SMOKE = RECIPES / "smoke"
DISTRIBUTED = RECIPES / "distributed"


def test_two_cpu_workers_reach_the_weights_of_one_process(tmp_path):
    code, out, err = run_cli(
        "train",
        SMOKE / "sft-lora-ddp2.yaml",
        f"output.dir={tmp_path / 'two'}",
        "training.max_steps=10",
        "--json",
    )
    assert code == 0, err
    summary = json.loads(out)  # stdout holds the summary only, though two workers ran
    assert summary["status"] == "completed" and summary["steps"] == 10
    assert err.count("plan") == 1  # one set of tables and progress
    assert (tmp_path / "two" / "accelerate_config.yaml").exists()
    assert (
        call_main("train", SMOKE / "sft-lora.yaml", f"output.dir={tmp_path / 'one'}", "training.max_steps=10")
        == 0
    )
    one = load_file(tmp_path / "one" / "adapter_model.safetensors")
    two = load_file(tmp_path / "two" / "adapter_model.safetensors")
    # Same global batch (1 x 4 = 2 x 2): identical weights only if each worker took a different half of it.
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
    metrics = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in metrics if "loss" in r]) == len(
        {r["step"] for r in metrics if "loss" in r}
    )  # once


@pytest.mark.slow
def test_a_failing_worker_fails_the_run_with_its_message(tmp_path):
    code, out, err = run_cli(
        "train",
        SMOKE / "sft-lora-ddp2.yaml",
        f"output.dir={tmp_path / 'run'}",
        "method.target_modules=[q_lin]",
    )
    assert code == 2 and out == ""
    assert "'q_lin' names no module" in err and "the workers failed" in err and "Traceback" not in err
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "failed"


@pytest.mark.slow
def test_deepspeed_trains_one_recipe_like_ddp(tmp_path):
    """One full fine-tuning recipe and seed, bf16, on DDP and DeepSpeed ZeRO-2 and ZeRO-3 (two CPU workers each):
    DDP autocasts fp32 weights, DeepSpeed computes with bf16 copies of its fp32 masters and saves them, so the loss
    curves agree within bf16 rounding and the saved weights within bf16 resolution. (FSDP runs on GPUs only: the GPU
    check compares it.)"""
    losses, weights = {}, {}
    for name in ("ddp", "zero2", "zero3"):  # FSDP runs on GPUs only
        out = tmp_path / name
        code, stdout, err = run_cli(
            "train",
            SMOKE / "sft-full.yaml",
            *ENGINES[name],
            "launch.device=cpu",
            "launch.num_processes=2",
            "training.batch_size=2",
            "training.max_steps=4",
            "training.logging_steps=1",
            "training.lr_scheduler=constant",
            "training.precision=bf16",
            f"output.dir={out}",
            "--json",
        )
        assert code == 0, err
        summary = json.loads(stdout)  # nothing but the summary on stdout, DeepSpeed installed or not
        assert summary["status"] == "completed"
        assert ("DeepSpeed" in summary["weights_dtype"]) == name.startswith("zero")
        assert yaml.safe_load((out / "accelerate_config.yaml").read_text())["num_processes"] == 2
        losses[name] = logged_losses(out)
        weights[name] = load_file(out / "model.safetensors")
    reference = losses["ddp"]
    assert len(reference) == 4 and reference[-1] < 0.7 * reference[0]  # it learns
    assert losses["zero2"] != reference  # a real DeepSpeed engine, not DDP under another name
    for name in ("zero2", "zero3"):
        for step, (loss, ref) in enumerate(zip(losses[name], reference, strict=True), 1):
            assert abs(loss - ref) <= 0.005 * ref, (name, step, loss, ref)  # measured: 0.08% at most
        for key, value in weights["ddp"].items():
            assert value.dtype == torch.float32 and weights[name][key].dtype == torch.bfloat16, key
            torch.testing.assert_close(weights[name][key].float(), value, rtol=1e-2, atol=1e-2, msg=key)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["launch.strategy=deepspeed"],
            "launch.strategy: DeepSpeed is not installed; pip install 'ftcli[deepspeed]'",
        ),
        (["launch.strategy=fsdp"], "launch.strategy: accelerate runs FSDP on GPUs only"),
    ],
)
def test_an_engine_the_workers_cannot_run_is_refused_before_anything_starts(
    overrides, message, tmp_path, monkeypatch, capsys
):
    from ftcli import dispatch

    monkeypatch.setattr(dispatch, "installed", lambda package: package != "deepspeed")
    out = tmp_path / "run"
    code = call_main("train", SMOKE / "sft-lora-ddp2.yaml", *overrides, f"output.dir={out}")
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert message in err, err


def test_launcher_python_runs_in_process(tmp_path):
    assert (
        call_main(
            "train",
            SMOKE / "sft-lora-ddp2.yaml",
            f"output.dir={tmp_path / 'run'}",
            "training.max_steps=2",
            "--launcher",
            "python",
        )
        == 0
    )
    assert not (tmp_path / "run" / "accelerate_config.yaml").exists()


def dry_run(capsys, recipe, *overrides):
    capsys.readouterr()
    assert call_main("train", recipe, *overrides, "--dry-run", "--json") == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(
    "name, expect",
    [
        (
            "qwen2.5-7b-lora-ddp",
            {"distributed_type": "MULTI_GPU", "num_processes": 8, "mixed_precision": "bf16"},
        ),
        (
            "llama-3.1-8b-full-zero2",
            {
                "distributed_type": "DEEPSPEED",
                "deepspeed_config": {
                    "zero_stage": 2,
                    "offload_optimizer_device": "none",
                    "offload_param_device": "none",
                    "zero3_init_flag": False,
                    "zero3_save_16bit_model": False,
                    "gradient_accumulation_steps": 2,
                    "gradient_clipping": 1.0,
                },
            },
        ),
        (
            "llama-3.1-70b-lora-zero3-offload",
            {
                "distributed_type": "DEEPSPEED",
                "deepspeed_config": {
                    "zero_stage": 3,
                    "offload_optimizer_device": "cpu",
                    "offload_param_device": "cpu",
                    "zero3_init_flag": True,
                    "zero3_save_16bit_model": True,
                    "gradient_accumulation_steps": 8,
                    "gradient_clipping": 1.0,
                },
            },
        ),
        ("qwen2.5-14b-full-fsdp", {"distributed_type": "FSDP"}),
        (
            "two-node-ddp",
            {"num_machines": 2, "num_processes": 16, "main_process_ip": "10.0.0.1", "machine_rank": 0},
        ),
    ],
)
def test_dry_run_shows_the_launch_for_each_strategy(name, expect, tmp_path, capsys):
    out = tmp_path / "run"
    result = dry_run(capsys, DISTRIBUTED / f"{name}.yaml", "launch.num_processes=8", f"output.dir={out}")
    config = result["config"]
    for key, value in expect.items():
        assert config[key] == value, key
    if name == "qwen2.5-14b-full-fsdp":
        assert config["fsdp_config"]["fsdp_sharding_strategy"] == "FULL_SHARD"
        assert config["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    assert result["command"][1:4] == ["-m", "accelerate.commands.launch", "--config_file"]
    assert result["command"][5:9] == ["-m", "ftcli.worker", "train", str(out)]
    assert not out.exists()  # a dry run touches nothing
    yaml.safe_dump(config)  # what would be written is a valid accelerate config file


def test_one_machine_takes_a_free_rendezvous_port_and_nodes_agree_on_29500(capsys):
    import socket

    with socket.socket() as taken:  # another run on this node holds torchrun's default
        taken.bind(("127.0.0.1", 29500))
        port = dry_run(capsys, SMOKE / "sft-lora-ddp2.yaml")["config"]["main_process_port"]
        assert port != 29500
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))  # free
    nodes = dry_run(capsys, DISTRIBUTED / "two-node-ddp.yaml", "launch.main_process_port=auto")
    assert nodes["config"]["main_process_port"] == 29500
    named = dry_run(capsys, SMOKE / "sft-lora-ddp2.yaml", "launch.main_process_port=29611")
    assert named["config"]["main_process_port"] == 29611


def test_one_process_dry_run_says_in_process(capsys):
    assert dry_run(capsys, SMOKE / "sft-lora.yaml")["config"] is None


@pytest.mark.slow
def test_sigterm_stops_every_worker_and_marks_the_run_interrupted(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ftcli",
            "train",
            str(SMOKE / "sft-lora-ddp2.yaml"),
            f"output.dir={out}",
            "training.epochs=100",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() and time.time() < deadline:  # training has started
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    workers = subprocess.run(["pgrep", "-f", f"ftcli.worker train {out}"], capture_output=True, text=True)
    assert workers.stdout.strip() == "", "a worker outlived the run"
    assert os.path.exists(out / "recipe.resolved.yaml")
