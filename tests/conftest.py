"""Shared test set-up: in-process vLLM engines on CPU and session-scoped tiny models."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable

# In-process engines start in seconds instead of ~20 s; the KV cache must be bounded on CPU.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist (`make test` runs two workers) each worker's engines compute on a core of
# their own; vLLM's automatic binding would put both on the same one.
if worker := os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault(
        "VLLM_CPU_OMP_THREADS_BIND", str(int(worker.removeprefix("gw")) % (os.cpu_count() or 1))
    )

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _baseline_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep engines.plain_greedy's baselines for this run: in its shared temp root under
    xdist (each worker's temp folder is a child of it), else in the session's own."""
    import engines

    base = tmp_path_factory.getbasetemp()
    engines.BASELINE_DIR = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / (
        "baselines"
    )


# --------------------------------------------------------------------------------------------
# The files whose tests run longest (a `vllm serve` pair, training runs, TP=2 engines) go first,
# each kept whole: xdist hands tests out in collection order, so a long one started last keeps
# the run waiting on one worker while the other idles.

LONG_FILES = ("test_serve.py", "test_train.py", "test_tensor_parallel.py", "test_interpreted.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))


# --------------------------------------------------------------------------------------------
# Engine start-ups, counted over the run (all xdist workers) and printed at its end: the cost
# that decides how long the suite takes.

_STARTS = {"engines": 0, "servers": 0}


def pytest_sessionstart(session: pytest.Session) -> None:
    from engines import settle_heap
    from vllm import LLM

    from vllm_vispec.tools.bench.server import VllmServer

    for kind, cls in (("engines", LLM), ("servers", VllmServer)):
        init = cls.__init__

        def counted(self, *args, _init=init, _kind=kind, **kwargs) -> None:
            _STARTS[_kind] += 1
            _init(self, *args, **kwargs)

        cls.__init__ = counted
    settle_heap()  # the imports' objects, before the first engine starts


def pytest_sessionfinish(session: pytest.Session) -> None:
    if hasattr(session.config, "workeroutput"):  # an xdist worker: report to the controller
        session.config.workeroutput["starts"] = dict(_STARTS)


def pytest_testnodedown(node, error) -> None:
    for kind, n in getattr(node, "workeroutput", {}).get("starts", {}).items():
        _STARTS[kind] += n


def pytest_terminal_summary(terminalreporter) -> None:
    terminalreporter.write_line(
        f"in-process vLLM engines started: {_STARTS['engines']}; vllm serve servers: "
        f"{_STARTS['servers']} (subprocesses of examples and the CLI not counted)"
    )


# --------------------------------------------------------------------------------------------
# Tiny local VLM targets and ViSpec drafts, built once per pytest run (a few seconds each).


@pytest.fixture(scope="session")
def qwen_target(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Folder of a tiny random Qwen2.5-VL (64 image tokens per 224x224 image)."""
    from vllm_vispec.tools.testing.tiny_targets import build_tiny_qwen2_5_vl

    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny-qwen2_5_vl"), seed=0)


@pytest.fixture(scope="session")
def llava_target(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Folder of a tiny random LLaVA-1.6 (88 image tokens per 224x224 image)."""
    from vllm_vispec.tools.testing.tiny_targets import build_tiny_llava_next

    return build_tiny_llava_next(tmp_path_factory.mktemp("tiny-llava_next"), seed=0)


@pytest.fixture(scope="session")
def qwen3_target(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Folder of a tiny random Qwen3-VL (49 image tokens per 224x224 image, one DeepStack level)."""
    from vllm_vispec.tools.testing.tiny_targets import build_tiny_qwen3_vl

    return build_tiny_qwen3_vl(tmp_path_factory.mktemp("tiny-qwen3_vl"), seed=0)


@pytest.fixture(scope="session")
def qwen3_moe_target(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Folder of a tiny random Qwen3-VL-MoE (the Qwen3-VL above with 4 experts, top-2, in every
    text layer)."""
    from vllm_vispec.tools.testing.tiny_targets import build_tiny_qwen3_vl_moe

    return build_tiny_qwen3_vl_moe(tmp_path_factory.mktemp("tiny-qwen3_vl_moe"), seed=0)


@pytest.fixture(scope="session")
def llava15_target(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Folder of a tiny random LLaVA-1.5 (16 image tokens per image, any size)."""
    from vllm_vispec.tools.testing.tiny_targets import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava"), seed=0)


@pytest.fixture(scope="session")
def qwen_draft(qwen_target: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Plugin-format ViSpec draft (num_q 2, echo) for the tiny Qwen2.5-VL target."""
    from vllm_vispec.tools.testing.tiny_drafts import build_tiny_draft

    return build_tiny_draft(qwen_target, tmp_path_factory.mktemp("qwen-draft") / "d", echo=True)


@pytest.fixture(scope="session")
def llava_draft(
    llava_target: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> pathlib.Path:
    """Plugin-format ViSpec draft (num_q 3, echo) for the tiny LLaVA-1.6 target."""
    from vllm_vispec.tools.testing.tiny_drafts import build_tiny_draft

    folder = tmp_path_factory.mktemp("llava-draft") / "d"
    return build_tiny_draft(llava_target, folder, num_q=3, echo=True)


@pytest.fixture(scope="session")
def qwen3_draft(
    qwen3_target: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> pathlib.Path:
    """Plugin-format ViSpec draft (num_q 2, echo) for the tiny Qwen3-VL target."""
    from vllm_vispec.tools.testing.tiny_drafts import build_tiny_draft

    return build_tiny_draft(qwen3_target, tmp_path_factory.mktemp("qwen3-draft") / "d", echo=True)


@pytest.fixture(scope="session")
def qwen_eaglevlm_draft(
    qwen_target: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> pathlib.Path:
    """EagleVLM draft (echo, input norm) for the tiny Qwen2.5-VL target."""
    from vllm_vispec.tools.testing.tiny_drafts import build_tiny_draft

    folder = tmp_path_factory.mktemp("qwen-eaglevlm-draft") / "d"
    return build_tiny_draft(qwen_target, folder, echo=True, kind="eaglevlm", input_norm=True)


@pytest.fixture(scope="session")
def llava_eaglevlm_draft(
    llava_target: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> pathlib.Path:
    """EagleVLM draft (echo, input and final norms) for the tiny LLaVA-1.6 target."""
    from vllm_vispec.tools.testing.tiny_drafts import build_tiny_draft

    folder = tmp_path_factory.mktemp("llava-eaglevlm-draft") / "d"
    norms = {"input_norm": True, "final_norm": True}
    return build_tiny_draft(llava_target, folder, echo=True, kind="eaglevlm", **norms)


@pytest.fixture(scope="session")
def specvlm_drafts(
    qwen_target: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], pathlib.Path]:
    """SpecVLM drafts (echo, input norm, compression 3) for the tiny Qwen2.5-VL target, by
    compressor (a primitive, or "gate"), each built once."""
    from vllm_vispec.tools.testing.tiny_drafts import build_tiny_draft

    built: dict[str, pathlib.Path] = {}

    def draft(compressor: str) -> pathlib.Path:
        if compressor not in built:
            folder = tmp_path_factory.mktemp(f"specvlm-{compressor}") / "d"
            settings = {"kind": "specvlm", "compressor": compressor, "input_norm": True}
            built[compressor] = build_tiny_draft(qwen_target, folder, echo=True, **settings)
        return built[compressor]

    return draft


@pytest.fixture(scope="session")
def qwen_specvlm_draft(specvlm_drafts: Callable[[str], pathlib.Path]) -> pathlib.Path:
    """The gated SpecVLM draft for the tiny Qwen2.5-VL target."""
    return specvlm_drafts("gate")


@pytest.fixture(scope="session")
def llava_specvlm_draft(
    llava_target: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> pathlib.Path:
    """Gated SpecVLM draft (echo, both norms, compression 4) for the tiny LLaVA-1.6 target."""
    from vllm_vispec.tools.testing.tiny_drafts import build_tiny_draft

    folder = tmp_path_factory.mktemp("llava-specvlm-draft") / "d"
    settings = {"kind": "specvlm", "compression": 4, "input_norm": True, "final_norm": True}
    return build_tiny_draft(llava_target, folder, echo=True, **settings)


@pytest.fixture(scope="session")
def qwen3_nemo_draft(
    qwen3_target: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> pathlib.Path:
    """A ViSpec draft for the tiny Qwen3-VL target as NeMo Automodel exports one (num_q 2,
    echo, trained input and final norms, attention head_dim 48 against hidden / heads = 32,
    two safetensors shards): vLLM is given this folder as it is."""
    from vllm_vispec.tools.testing.tiny_drafts import build_tiny_draft

    folder = tmp_path_factory.mktemp("qwen3-nemo-draft") / "d"
    return build_tiny_draft(qwen3_target, folder, echo=True, nemo_export=True, head_dim=48)


@pytest.fixture(scope="session")
def qwen3_moe_draft(
    qwen3_moe_target: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> pathlib.Path:
    """Plugin-format ViSpec draft (dense, num_q 2, echo) for the tiny Qwen3-VL-MoE target."""
    from vllm_vispec.tools.testing.tiny_drafts import build_tiny_draft

    folder = tmp_path_factory.mktemp("qwen3-moe-draft") / "d"
    return build_tiny_draft(qwen3_moe_target, folder, echo=True)


@pytest.fixture(scope="session")
def llava15_draft(
    llava15_target: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> pathlib.Path:
    """Plugin-format ViSpec draft (num_q 2, echo) for the tiny LLaVA-1.5 target."""
    from vllm_vispec.tools.testing.tiny_drafts import build_tiny_draft

    return build_tiny_draft(
        llava15_target, tmp_path_factory.mktemp("llava15-draft") / "d", echo=True
    )


@pytest.fixture(scope="session")
def qwen_eagle_draft(
    qwen_target: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> pathlib.Path:
    """A same-size plain EAGLE-1 draft (vLLM's built-in format) for the tiny Qwen2.5-VL."""
    from vllm_vispec.tools.testing.tiny_drafts import build_tiny_eagle_draft

    return build_tiny_eagle_draft(
        qwen_target, tmp_path_factory.mktemp("qwen-eagle") / "d", echo=True
    )
