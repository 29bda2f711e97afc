"""The benchmarks run end to end in their quick modes, so they cannot rot. Their numbers are not asserted
(performance is measured in bench/, never in tests); only that every variant ran and was measured."""

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT


@pytest.mark.slow
def test_throughput_benchmark_quick_mode_runs_every_variant(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "throughput.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "throughput-quick.json").read_text())
    assert set(report["results"]) == {"raw", "raw-lora", "trl", "ftcli-full", "ftcli-lora"}
    for name, result in report["results"].items():
        assert result["tokens_per_s"] > 0 and result["wall_s"] > 0 and result["peak_rss"] > 0, name
    assert report["results"]["ftcli-full"]["gradient_checkpointing"] is False  # auto: the smoke model fits
    markdown = (tmp_path / "throughput-quick.md").read_text()
    assert "| ftcli-lora |" in markdown and "x the raw peft LoRA loop" in markdown


@pytest.mark.slow
def test_gpu_check_smoke_mode_runs_every_stage(tmp_path):
    """bench/gpu_check.py is run by hand on a GPU machine; its --smoke mode runs the same stages tiny, anywhere."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "gpu-check-smoke.json").read_text())
    assert set(results["throughput"]) == {
        "raw-amp",
        "raw-bf16",
        "raw-lora",
        "trl",
        "ftcli-full",
        "ftcli-lora",
        "ftcli-qlora",
    }
    for name, result in results["throughput"].items():
        assert result["tokens_per_s"] > 0 and result["steps"] > 0, (name, result)
    assert results["throughput"]["ftcli-qlora"]["ftcli"]["status"] == "completed"
    assert results["engines"]["ddp"]["status"] == "ok" and len(results["engines"]["ddp"]["losses"]) == 3
    assert results["infer"]["ftcli_tokens"] > 0 and results["infer"]["generate_tokens"] > 0
    assert "| ftcli-lora |" in (tmp_path / "gpu-check-smoke.md").read_text()
