"""The Triton kernels on CPU, through Triton's interpreter, in one fresh interpreter.

``TRITON_INTERPRET=1`` only takes effect before Triton is first imported, which vLLM does as soon
as a test module imports it; so the Triton cases (the kernels against their PyTorch references,
and the draft attention kernel inside a real engine) run in a subprocess of their own, one for
all of them.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

TESTS = pathlib.Path(__file__).resolve().parent
FILES = ("test_kernels_triton.py", "test_tree_kernels_triton.py", "test_parity.py")
SELECT = "kernels_triton or (first_pass and triton)"


def test_triton_kernels_interpreted() -> None:
    pytest.importorskip("triton")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts="]
    proc = subprocess.run(
        [*cmd, "-k", SELECT, *(str(TESTS / f) for f in FILES)],
        env={**os.environ, "TRITON_INTERPRET": "1"},
        cwd=TESTS.parent,
        capture_output=True,
        text=True,
        timeout=900,
    )
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail
    passed = re.search(r"(\d+) passed", tail)
    assert passed and int(passed[1]) > 40 and not re.search(r"\d+ skipped", tail), tail
