"""A run stopped by SIGTERM leaves a checkpoint and says so; a diverging run stops with the step."""

import json
import signal
import subprocess
import sys
import time

from tests.helpers import RECIPES, run_cli

SMOKE = RECIPES / "smoke" / "sft-lora.yaml"


def test_sigterm_saves_a_checkpoint_marks_interrupted_and_resume_finishes(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "ftcli", "train", str(SMOKE), f"output.dir={out}",
                             "training.epochs=100", "training.logging_steps=1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM at step" in err and "--resume" in err and "Traceback" not in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert checkpoints and (checkpoints[-1] / "trainer_state.json").exists()
    stopped_at = int(checkpoints[-1].name.split("-")[1])
    code, _, err = run_cli("train", SMOKE, f"output.dir={out}", "training.epochs=100",
                           f"training.max_steps={stopped_at + 3}", "--resume")  # fmt: skip
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["steps"] == stopped_at + 3


def test_a_diverging_loss_stops_the_run_naming_the_step(tmp_path):
    code, _, err = run_cli("train", SMOKE, f"output.dir={tmp_path / 'run'}", "training.learning_rate=1e12",
                           "training.max_grad_norm=0", "training.logging_steps=1", "training.max_steps=60")  # fmt: skip
    assert code == 2, err
    assert "the training loss became" in err and "by step" in err and "Traceback" not in err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "loss became" in summary["error"]


def test_kill_9_between_checkpoints_then_resume_matches_an_uninterrupted_run(tmp_path):
    from safetensors.torch import load_file

    steps = ["training.max_steps=40", "training.save_steps=10", "training.save_total_limit=5",
             "data.eval_fraction=0"]  # fmt: skip
    assert run_cli("train", RECIPES / "smoke" / "sft-full.yaml", f"output.dir={tmp_path / 'a'}", *steps)[0] == 0
    out = tmp_path / "b"
    proc = subprocess.Popen([sys.executable, "-m", "ftcli", "train", str(RECIPES / "smoke" / "sft-full.yaml"),
                             f"output.dir={out}", *steps], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 120
    while not (out / "checkpoint-20" / "trainer_state.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()  # SIGKILL: nothing runs after it
    proc.wait()
    assert not (out / "model.safetensors").exists()
    # a save cut short looks like a checkpoint dir without its trainer_state.json (written last): skipped
    partial = out / "checkpoint-30"
    partial.mkdir(exist_ok=True)
    code, _, err = run_cli("train", RECIPES / "smoke" / "sft-full.yaml", f"output.dir={out}", *steps, "--resume")
    assert code == 0, err
    first, resumed = load_file(tmp_path / "a" / "model.safetensors"), load_file(out / "model.safetensors")
    for key in first:
        assert torch_close(resumed[key], first[key]), key


def torch_close(a, b) -> bool:
    import torch

    return torch.allclose(a, b, rtol=1e-5, atol=1e-6)
