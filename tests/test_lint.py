"""The code stays lint-clean (ruff, configured in pyproject.toml)."""

import shutil
import subprocess

import pytest

from tests.helpers import ROOT


def test_ruff_is_clean():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is part of the test extra: pip install -e '.[test]'")
    result = subprocess.run([ruff, "check", "ftcli", "tests"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
