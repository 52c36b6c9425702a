"""Run a test file in a fresh interpreter with TRITON_INTERPRET=1 (Triton kernels on CPU).

The variable only takes effect before Triton is first imported, which vLLM does as soon as a
test module imports it; so the Triton cases run in a subprocess of their own.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys


def run_interpreted(test_file: str, *pytest_args: str, timeout: int = 900) -> None:
    """Run ``pytest test_file *pytest_args`` interpreted; fail on any failure or skip."""
    path = pathlib.Path(__file__).with_name(test_file)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts="]
    proc = subprocess.run(
        [*cmd, *pytest_args, str(path)],
        env=env,
        cwd=path.parent.parent,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail
    assert re.search(r"\d+ passed", tail) and "skipped" not in tail, tail
