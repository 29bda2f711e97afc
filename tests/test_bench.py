"""The throughput benchmark runs end to end in --quick mode, so it cannot rot. Its numbers are not asserted
(performance is measured in bench/, never in tests); only that every variant ran and was measured."""

import json
import subprocess
import sys

from tests.helpers import ROOT


def test_throughput_benchmark_quick_mode_runs_every_variant(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "throughput.py"), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "throughput-quick.json").read_text())
    assert set(report["results"]) == {"raw", "trl", "ftcli-full", "ftcli-lora"}
    for name, result in report["results"].items():
        assert result["tokens_per_s"] > 0 and result["wall_s"] > 0 and result["peak_rss"] > 0, name
    assert report["results"]["ftcli-full"]["gradient_checkpointing"] is False  # auto: the smoke model fits
    assert "| ftcli-lora |" in (tmp_path / "throughput-quick.md").read_text()
