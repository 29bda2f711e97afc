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
