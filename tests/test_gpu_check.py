"""`scripts/gpu_check.py`, the CUDA checks, kept working between GPU sessions: its CPU part runs here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # ~30 s: FlexAttention compiles on the CPU


def test_the_gpu_check_runs_on_the_cpu_and_reports(tmp_path):
    report = tmp_path / "gpu_check.md"
    script = ROOT / "scripts" / "gpu_check.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--device", "cpu", "--quick", "--out", str(report)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = report.read_text()
    assert "5 of 5 checks passed." in text
    assert "| vLLM 0.32 BLHNC (pages outermost) | bfloat16 | ok |" in text and "| 1,024 | 4 |" in text  # the mover
    assert "| qwen3 | keep1 |" in text and "| flex_attention | - | - | not run (its backward needs CUDA) |" in text
    refused = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "no CUDA device is visible" in refused.stderr  # the default asks for CUDA
