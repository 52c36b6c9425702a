"""The runtime (what ``vllm serve`` loads) never imports tooling or tooling-only dependencies.

A fresh interpreter imports what vLLM itself loads to call a plugin, snapshots ``sys.modules``
and calls ``register()``; then imports what a vLLM worker loads for an EAGLE draft, snapshots
again and imports the plugin's worker-side modules (draft and proposer); it reports what the
plugin added each time. transformers pulls accelerate in by itself when it is installed, so the
snapshot is taken after vLLM's own imports: anything the plugin adds on top is its own doing.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vllm_vispec"
TOOLING = ("tools",)  # vllm_vispec.tools: everything a server never loads
# Distributions only the tooling extras ([train], [bench]) install.
TOOLING_DEPS = ("accelerate", "matplotlib", "openai", "PIL", "scipy", "tqdm")

PROBE = """
import json, sys
import vllm
from vllm import ModelRegistry
from vllm.logger import init_logger
from vllm.platforms import current_platform
from vllm.triton_utils import HAS_TRITON
before = set(sys.modules)
import vllm_vispec
vllm_vispec.register()
registered = sorted(set(sys.modules) - before)
# What vLLM loads in a worker anyway: the EAGLE proposer and the model layers the draft uses.
import vllm.v1.spec_decode.eagle, vllm.model_executor.models.llama
import vllm.model_executor.layers.attention, vllm.compilation.breakable_cudagraph
before = set(sys.modules)
import vllm_vispec.draft.model, vllm_vispec.runners.v1.proposer
worker = sorted(set(sys.modules) - before)
print(json.dumps({"registered": registered, "worker": worker}))
"""


def _is_tooling(module: str) -> bool:
    parts = module.split(".")
    if parts[0] == "vllm_vispec":
        return len(parts) > 1 and parts[1] in TOOLING
    return parts[0] in TOOLING_DEPS


@pytest.fixture(scope="module")
def loaded() -> dict[str, list[str]]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=300
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_register_loads_no_tooling(loaded: dict[str, list[str]]) -> None:
    assert "vllm_vispec.patches" in loaded["registered"]
    tooling = [m for m in loaded["registered"] if _is_tooling(m)]
    assert not tooling, f"register() imported tooling: {tooling}"
    heavy = [m for m in loaded["registered"] if m.startswith("vllm_vispec.draft.model")]
    assert not heavy, "register() must not build or import the draft model"


def test_workers_load_no_tooling(loaded: dict[str, list[str]]) -> None:
    assert "vllm_vispec.runners.v1.proposer" in loaded["worker"]
    tooling = [m for m in loaded["worker"] if _is_tooling(m)]
    assert not tooling, f"the draft and proposer imported tooling: {tooling}"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


RUNTIME_FILES = sorted(
    p
    for p in PACKAGE.rglob("*.py")
    if p.relative_to(PACKAGE).parts[0].removesuffix(".py") not in TOOLING
)


@pytest.mark.parametrize("path", RUNTIME_FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_runtime_modules_import_no_tooling(path: Path) -> None:
    """Also lazy imports inside functions, which the probe above would not execute."""
    bad = sorted(m for m in _imports(path) if _is_tooling(m))
    assert not bad, f"{path.relative_to(PACKAGE)} imports tooling: {bad}"
