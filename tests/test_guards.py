"""A run stopped by SIGTERM leaves a checkpoint and says so; a diverging run stops with the step."""

import json
import signal
import subprocess
import sys
import time

import pytest

from ftcli.run_dir import staging_dir
from tests.helpers import RECIPES, run_cli

SMOKE = RECIPES / "smoke" / "sft-lora.yaml"
FULL = RECIPES / "smoke" / "sft-full.yaml"
STEPS = [
    "training.max_steps=40",
    "training.save_steps=10",
    "training.save_total_limit=5",
    "data.eval_fraction=0",
]

# `ftcli ARGS...` in this child process, dying (os._exit: no cleanup, like SIGKILL) in the middle of the save of
# checkpoint-STEP: after its weights are written, before its optimizer, scheduler, RNG and trainer state are.
DIE_MID_SAVE = """
import os, sys
from transformers import Trainer
save = Trainer._save_optimizer_and_scheduler
def dying(self, output_dir):
    if self.state.global_step == int(sys.argv[1]):
        os._exit(9)
    save(self, output_dir)
Trainer._save_optimizer_and_scheduler = dying
from ftcli.cli import main
main(sys.argv[2:])
"""


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The weights of the STEPS run of sft-full, trained without a stop."""
    from safetensors.torch import load_file

    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    code, _, err = run_cli("train", FULL, f"output.dir={out}", *STEPS)
    assert code == 0, err
    return load_file(out / "model.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"]
)
def test_a_stop_signal_saves_a_checkpoint_marks_interrupted_and_resume_finishes(tmp_path, signum, code):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ftcli",
            "train",
            str(SMOKE),
            f"output.dir={out}",
            "training.epochs=100",
            "training.logging_steps=1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as from a terminal: a suite started in the background (`pytest &`) hands its children SIGINT ignored,
        # and a run rightly leaves an ignored SIGINT alone
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert (
        f"stopped by {signal.Signals(signum).name} at step" in err
        and "--resume" in err
        and "Traceback" not in err
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert checkpoints and (checkpoints[-1] / "trainer_state.json").exists()
    stopped_at = int(checkpoints[-1].name.split("-")[1])
    code, _, err = run_cli(
        "train",
        SMOKE,
        f"output.dir={out}",
        "training.epochs=100",
        f"training.max_steps={stopped_at + 3}",
        "--resume",
    )
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["steps"] == stopped_at + 3


def test_a_diverging_loss_stops_the_run_naming_the_step(tmp_path):
    code, _, err = run_cli(
        "train",
        SMOKE,
        f"output.dir={tmp_path / 'run'}",
        "training.learning_rate=1e12",
        "training.max_grad_norm=0",
        "training.logging_steps=1",
        "training.max_steps=60",
    )
    assert code == 2, err
    assert "the training loss became" in err and "by step" in err and "Traceback" not in err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "loss became" in summary["error"]


@pytest.mark.slow
def test_kill_9_between_checkpoints_then_resume_matches_an_uninterrupted_run(tmp_path, uninterrupted):
    out = tmp_path / "b"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ftcli", "train", str(FULL), f"output.dir={out}", *STEPS],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not (out / "checkpoint-20" / "trainer_state.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()  # SIGKILL: nothing runs after it
    proc.wait()
    assert not (out / "model.safetensors").exists()
    # a save cut short in place (as older versions wrote) lacks trainer_state.json (written last): skipped
    partial = out / "checkpoint-30"
    partial.mkdir(exist_ok=True)
    code, _, err = run_cli("train", FULL, f"output.dir={out}", *STEPS, "--resume")
    assert code == 0, err
    assert_same_weights(out, uninterrupted)


@pytest.mark.slow
def test_kill_during_a_checkpoint_save_keeps_the_previous_one_and_resume_matches(tmp_path, uninterrupted):
    out = tmp_path / "run"
    killed = subprocess.run(
        [sys.executable, "-c", DIE_MID_SAVE, "20", "train", str(FULL), f"output.dir={out}", *STEPS],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == 9, killed.stderr
    staged = staging_dir(out, 20)
    assert (staged / "checkpoint-20" / "model.safetensors").exists()  # it died midway through that save
    assert not (out / "checkpoint-20").exists()  # and left no broken newest checkpoint
    whole = {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"}
    assert whole <= {p.name for p in (out / "checkpoint-10").iterdir()}  # the one before is whole
    code, _, err = run_cli("train", FULL, f"output.dir={out}", *STEPS, "--resume")
    assert code == 0, err
    assert not staged.exists()  # the leftover is cleared
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-{n}" for n in (10, 20, 30, 40)]
    assert_same_weights(out, uninterrupted)


def assert_same_weights(out, expected):
    from safetensors.torch import load_file

    resumed = load_file(out / "model.safetensors")
    for key in expected:
        assert torch_close(resumed[key], expected[key]), key


def torch_close(a, b) -> bool:
    import torch

    return torch.allclose(a, b, rtol=1e-5, atol=1e-6)
