"""The code stays lint-clean and formatted (ruff check and ruff format, configured in pyproject.toml)."""

import shutil
import subprocess

import pytest

from tests.helpers import ROOT

PATHS = ["ftcli", "tests", "bench", "recipes"]


def ruff() -> str:
    found = shutil.which("ruff")
    if found is None:
        pytest.fail("ruff is part of the test extra: pip install -e '.[test]'")
    return found


def test_ruff_is_clean():
    result = subprocess.run([ruff(), "check", *PATHS], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_code_is_formatted():
    result = subprocess.run([ruff(), "format", "--check", *PATHS], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, (
        "run `ruff format ftcli tests bench recipes`:\n" + result.stdout + result.stderr
    )
