"""Set-up for the V2 suite: it runs in ``.venv034`` (vLLM 0.34, ``make test-vllm034``) only.

Kept out of ``tests/`` so that ``make test`` (vLLM 0.32) never collects it; run anywhere else,
every test here is skipped with the command to use. The tiny models come from the project's
builders, imported from this checkout (the plugin is not installed in ``.venv034``).
"""

from __future__ import annotations

import importlib.metadata
import os
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

VLLM_SERIES = "0.34."


def _vllm_version() -> str:
    try:
        return importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return "none"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    version = _vllm_version()
    if version.startswith(VLLM_SERIES):
        return
    reason = f"needs vLLM {VLLM_SERIES}x (found {version}): make test-vllm034"
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if item.path.is_relative_to(pathlib.Path(__file__).parent):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def vllm032_python() -> pathlib.Path:
    """The 0.32 venv's interpreter (V1's reference tokens): ``VLLM032_PYTHON`` or ``.venv``."""
    python = pathlib.Path(os.environ.get("VLLM032_PYTHON") or ROOT / ".venv" / "bin" / "python")
    if not python.exists():
        pytest.skip(f"no vLLM 0.32 interpreter at {python}: make install, or set VLLM032_PYTHON")
    return python


@pytest.fixture(scope="session")
def qwen_target(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Folder of the project's tiny random Qwen2.5-VL (64 image tokens per 224x224 image)."""
    from vllm_vispec.tools.testing.tiny_targets import build_tiny_qwen2_5_vl

    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny-qwen2_5_vl"), seed=0)


@pytest.fixture(scope="session")
def qwen_eagle_draft(
    qwen_target: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> pathlib.Path:
    """A same-size EAGLE-1 draft in vLLM's own format (echo) for the tiny Qwen2.5-VL."""
    from vllm_vispec.tools.testing.tiny_drafts import build_tiny_eagle_draft

    return build_tiny_eagle_draft(
        qwen_target, tmp_path_factory.mktemp("qwen-eagle") / "d", echo=True
    )


@pytest.fixture(scope="session")
def test_image(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A 224x224 test picture as a PNG file, so that both venvs read the same pixels."""
    from vllm_vispec.tools.testing.tiny_targets import make_test_image

    path = tmp_path_factory.mktemp("images") / "picture.png"
    make_test_image(1).save(path)
    return path
