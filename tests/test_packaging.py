"""What `pip install ftcli` gives: a wheel whose package list is complete and that carries the bundled recipes and
their data, so `ftcli recipes` and `ftcli train smoke/sft-lora` work away from a checkout."""

import json
import os
import subprocess
import sys

import pytest
import tomllib

from tests.helpers import ROOT


def test_the_wheel_lists_every_package_of_ftcli():
    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.relative_to(ROOT).parts[:-1]) for p in (ROOT / "ftcli").rglob("__init__.py")}
    assert found <= declared, f"add to pyproject.toml's packages: {sorted(found - declared)}"


@pytest.mark.slow
def test_an_installed_wheel_runs_the_bundled_recipes_outside_the_checkout(tmp_path):
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(wheels)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(wheels.glob("ftcli-*.whl"))
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(target)}  # the wheel's ftcli, not the checkout's

    def ftcli(*args):
        return subprocess.run(
            [sys.executable, "-m", "ftcli", *map(str, args)],
            capture_output=True,
            text=True,
            cwd=elsewhere,
            env=env,
            timeout=600,
        )

    listed = ftcli("recipes", "--json")
    assert listed.returncode == 0, listed.stderr
    recipes = {r["name"]: r for r in json.loads(listed.stdout)}
    assert {"smoke/sft-lora", "sft/mistral-7b-lora", "align/qwen2.5-0.5b-dpo-ultrafeedback"} <= set(recipes)
    assert recipes["smoke/sft-lora"]["path"].startswith(str(target))
    assert ftcli("validate", "sft/mistral-7b-lora").returncode == 0
    run = ftcli(
        "train", "smoke/sft-lora", "training.max_steps=2", f"output.dir={elsewhere / 'run'}", "--json"
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout)["status"] == "completed"
    assert (
        str(target) in (elsewhere / "run" / "recipe.resolved.yaml").read_text()
    )  # its data came from the wheel
