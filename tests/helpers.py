"""Shared helpers for the tests."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
DATA = RECIPES / "data"


def run_cli(*args, env=None, cwd=None, input=None, timeout=600):
    """Run ftcli in a fresh process: returns (exit code, stdout, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "ftcli", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, input=input, timeout=timeout,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    return proc.returncode, proc.stdout, proc.stderr


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
