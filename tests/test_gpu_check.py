"""benchmarks/gpu_check.py at tiny shapes on CPU (``--tiny``: Triton's interpreter), so the GPU
check's own code is exercised before a GPU runs it: with ``import vllm`` blocked, every kernel
case agrees with its reference, every part runs and the training loss falls."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_gpu_check_tiny(tmp_path: pathlib.Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--tiny", "--out", tmp_path],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    parts = result["parts"]
    assert all(part["ok"] for part in parts.values()), tail
    assert parts["imports"]["vllm_blocked"] and parts["imports"]["passed"], parts["imports"]
    cases = parts["correctness"]["cases"]
    kernels = {"adaptor", "draft_attention", "tree_attention", "tree_verify", "compact_kv"}
    assert {c["kernel"] for c in cases} == kernels
    assert all(c["passed"] and c["rel_err"] <= c["tolerance"] for c in cases), cases
    assert parts["draft_step"]["passed"] and parts["training"]["passed"], parts["training"]
    assert all(r["ms"] for p in ("adaptor_speed", "attention_speed", "verify_speed")
               for r in parts[p]["rows"])  # fmt: skip
    for name in ("gpu_check.json", "gpu_check.md", "gpu_check.png"):
        assert (tmp_path / name).stat().st_size > 0, name
