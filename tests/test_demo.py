"""``vllm-vispec demo`` end to end: answers identical to plain decoding, a speed line, and
vLLM's log in a file instead of the terminal."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_is_lossless_and_quiet(tmp_path: pathlib.Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "vllm_vispec.tools.cli", "demo", "--images", "1",
         "--max-tokens", "24", "--cache", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "all answers identical: True" in out.stdout
    assert "speedup" in out.stdout and "mean acceptance length" in out.stdout
    assert "INFO" not in out.stdout + out.stderr, "vLLM's log reached the terminal"
    log = (tmp_path / "demo.log").read_text()
    assert "Initializing a V1 LLM engine" in log and "ViSpec" in log
