"""The upgrade guard of the V2 adapter: every vLLM 0.34 internal it relies on is still there.

Runs in seconds without an engine, as ``tests/test_upgrade_guard.py`` does for the V1 adapter:
the runner-neutral ledger section and the V2 section (hooks, overridden methods with their
parameters, the state the speculator reads), and every vLLM symbol the runner-neutral core and
the V2 adapter import (the internals table rows not used by the V1 adapter alone).
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

from vllm_vispec import patches
from vllm_vispec.patches.internals import INTERNALS
from vllm_vispec.runners.v2 import ledger as v2
from vllm_vispec.tools.testing.guard import (
    assigned_attributes,
    parameters,
    resolve,
    runtime_vllm_imports,
)

LEDGER = patches.LEDGER + v2.LEDGER
SPECULATOR = "vllm.v1.worker.gpu.spec_decode.eagle.speculator:EagleSpeculator"
# Overrides whose parameters differ from vLLM's on purpose: __init__ also takes req_states
# (init_speculator passes it by signature), propose passes vLLM's arguments through.
OWN_PARAMETERS = ("__init__", "propose")


@pytest.mark.parametrize("symbol", [s for p in LEDGER for s in p.upstream] + list(v2.HOOKS))
def test_hooks_and_patched_symbols_exist(symbol: str) -> None:
    try:
        resolve(symbol)
    except (ImportError, AttributeError) as e:
        pytest.fail(f"V2 ledger: upstream symbol {symbol} is gone ({e})")


@pytest.mark.parametrize("method", sorted(v2.SPECULATOR_OVERRIDES))
def test_overridden_signatures(method: str) -> None:
    from vllm_vispec.runners.v2.speculator import ViSpecSpeculator

    upstream = getattr(resolve(SPECULATOR), method)
    assert parameters(upstream) == v2.SPECULATOR_OVERRIDES[method], (
        f"V2 ledger SPECULATOR_OVERRIDES[{method!r}]: vLLM's EagleSpeculator.{method} is now "
        f"{parameters(upstream)}; update ViSpecSpeculator.{method} and the ledger"
    )
    assert method in vars(ViSpecSpeculator)
    if method not in OWN_PARAMETERS:
        assert parameters(getattr(ViSpecSpeculator, method)) == parameters(upstream), method


def test_every_override_is_in_the_ledger() -> None:
    from vllm_vispec.runners.v2.speculator import ViSpecSpeculator

    base = resolve(SPECULATOR)
    overridden = {n for n, v in vars(ViSpecSpeculator).items() if callable(v) and hasattr(base, n)}
    missing = overridden - set(v2.SPECULATOR_OVERRIDES)
    assert not missing, f"ViSpecSpeculator overrides {sorted(missing)}: add them to the ledger"


@pytest.mark.parametrize(
    ("symbol", "names"),
    [
        (SPECULATOR, v2.SPECULATOR_ATTRIBUTES),
        ("vllm.v1.worker.gpu.model_states.interface:ModelState", v2.MODEL_STATE_ATTRIBUTES),
        ("vllm.v1.worker.gpu.mm.encoder_runner:EncoderRunner", v2.ENCODER_RUNNER_ATTRIBUTES),
        ("vllm.v1.worker.gpu.input_batch:InputBatch", v2.INPUT_BATCH_ATTRIBUTES),
        ("vllm.v1.worker.gpu.mm.encoder_cache:EncoderCache", v2.ENCODER_CACHE_ATTRIBUTES),
        ("vllm.v1.worker.gpu.states:RequestState", v2.REQUEST_STATE_ATTRIBUTES),
    ],
    ids=["speculator", "ModelState", "EncoderRunner", "InputBatch", "EncoderCache", "RequestState"],
)
def test_state_the_speculator_reads(symbol: str, names: tuple[str, ...]) -> None:
    known = assigned_attributes(resolve(symbol))
    for name in names:
        assert name in known, f"V2 ledger: vLLM's {symbol} no longer has {name!r}"


def test_the_speculator_reads_only_listed_state() -> None:
    """Every ``batch.X`` / ``cache.X`` / ``states.X`` / ``state.X`` (the model state) the
    speculator reads is in the ledger."""
    from vllm_vispec.runners.v2 import speculator

    source = Path(inspect.getfile(speculator)).read_text()
    for var, listed in (
        ("batch", v2.INPUT_BATCH_ATTRIBUTES),
        ("cache", v2.ENCODER_CACHE_ATTRIBUTES),
        ("states", v2.REQUEST_STATE_ATTRIBUTES),
        ("state", v2.MODEL_STATE_ATTRIBUTES),
    ):
        read = set(re.findall(rf"\b{var}\.(\w+)", source))
        assert read <= set(listed), f"{var}: {sorted(read - set(listed))} not in the V2 ledger"


def test_the_draft_declares_the_vispec_speculator() -> None:
    """vLLM's registry reads the draft's speculator from the class the adapter registers."""
    from vllm.model_executor.models.registry import _ModelInfo

    from vllm_vispec.runners import v2

    module, _, name = v2.DRAFT_MODEL.partition(":")
    info = _ModelInfo.from_model_cls(getattr(importlib.import_module(module), name))
    assert info.speculator_config_class == "vllm_vispec.runners.v2.config.ViSpecSpeculatorConfig"


@pytest.mark.parametrize(
    "internal",
    [i for i in INTERNALS if not all("runners.v1" in u for u in i.used_by.split(", "))],
    ids=lambda i: i.symbol,
)
def test_internals_of_the_core_resolve(internal: object) -> None:
    try:
        obj = resolve(internal.symbol)
    except (ImportError, AttributeError) as e:
        pytest.fail(f"internals table: {internal.symbol} is gone on vLLM 0.34 ({e})")
    if internal.parameters is not None:
        assert parameters(obj) == internal.parameters, internal.symbol


def test_every_vllm_import_of_the_core_and_the_adapter_is_listed() -> None:
    listed = {i.symbol for i in INTERNALS} | set(v2.HOOKS)
    missing = runtime_vllm_imports(skip=("runners/v1",)) - listed
    assert not missing, f"imports {sorted(missing)}: add them to the V2 ledger's HOOKS"
