"""The upgrade guard: every vLLM internal the plugin touches still exists as the ledger says.

Runs in seconds without an engine. When a vLLM upgrade moves a patched symbol, changes the
signature of a method the proposer overrides, or drops runner state the proposer reads, one of
these fails and names the ledger entry (:mod:`vllm_vispec.patches`) to revisit.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest
from vllm.v1.spec_decode.eagle import EagleProposer
from vllm.v1.worker.gpu_input_batch import CachedRequestState, InputBatch
from vllm.v1.worker.gpu_model_runner import GPUModelRunner

from vllm_vispec import patches
from vllm_vispec.runners.v1 import ledger as v1
from vllm_vispec.runners.v1 import tree_verifier
from vllm_vispec.runners.v1.proposer import ViSpecProposer
from vllm_vispec.runners.v1.tree_proposer import ViSpecTreeProposer
from vllm_vispec.tools.testing.guard import (
    assigned_attributes,
    parameters,
    resolve,
    runtime_vllm_imports,
)

LEDGER = patches.LEDGER + v1.LEDGER
PROPOSERS = (ViSpecProposer, ViSpecTreeProposer)
PROPOSER_SOURCE = "".join(Path(inspect.getfile(cls)).read_text() for cls in PROPOSERS)
TREE_HOOKS_SOURCE = Path(inspect.getfile(tree_verifier)).read_text()


@pytest.mark.parametrize("patch", LEDGER, ids=lambda p: f"{p.name}.{p.entry}")
def test_patched_symbols_exist(patch: patches.Patch) -> None:
    for symbol in patch.upstream:
        try:
            resolve(symbol)
        except (ImportError, AttributeError) as e:
            pytest.fail(f"ledger entry {patch.name!r}: upstream symbol {symbol} is gone ({e})")
    if patch.trigger is not None:
        importlib.import_module(patch.trigger)
    module = importlib.import_module(patch.module)
    assert callable(getattr(module, patch.entry, None)), (
        f"ledger entry {patch.name!r} has no {patch.entry}()"
    )


@pytest.mark.parametrize("symbol", sorted(v1.WRAPPED_METHODS))
def test_wrapped_signatures(symbol: str) -> None:
    assert parameters(resolve(symbol)) == v1.WRAPPED_METHODS[symbol], (
        f"ledger WRAPPED_METHODS: vLLM's {symbol} is now {parameters(resolve(symbol))}; "
        "update the tree patch that wraps it and the ledger"
    )


def test_every_wrapped_method_is_in_a_ledger_entry() -> None:
    upstream = {symbol for patch in LEDGER for symbol in patch.upstream}
    assert set(v1.WRAPPED_METHODS) <= upstream


@pytest.mark.parametrize("method", sorted(v1.PROPOSER_OVERRIDES))
def test_overridden_signatures(method: str) -> None:
    upstream = getattr(EagleProposer, method)
    assert parameters(upstream) == v1.PROPOSER_OVERRIDES[method], (
        f"ledger PROPOSER_OVERRIDES[{method!r}]: vLLM's EagleProposer.{method} is now "
        f"{parameters(upstream)}; update the ViSpec proposers' {method} and the ledger"
    )
    for cls in PROPOSERS:
        assert parameters(getattr(cls, method)) == parameters(upstream), (
            f"{cls.__name__}.{method} does not take vLLM's parameters {parameters(upstream)}"
        )


@pytest.mark.parametrize("cls", PROPOSERS, ids=lambda cls: cls.__name__)
def test_every_override_is_in_the_ledger(cls: type) -> None:
    overridden = {
        name
        for name, value in vars(cls).items()
        if callable(value) and hasattr(EagleProposer, name)
    }
    missing = overridden - set(v1.PROPOSER_OVERRIDES)
    assert not missing, f"{cls.__name__} overrides {sorted(missing)}: add them to the ledger"


def test_proposer_attributes() -> None:
    known = assigned_attributes(EagleProposer)
    for name in v1.PROPOSER_ATTRIBUTES:
        assert name in known, f"ledger PROPOSER_ATTRIBUTES: EagleProposer no longer has {name!r}"


def test_runner_attributes() -> None:
    wrapped = {symbol.rpartition(".")[2] for symbol in v1.WRAPPED_METHODS}
    read = set(re.findall(r"\brunner\.(\w+)", PROPOSER_SOURCE + TREE_HOOKS_SOURCE)) - wrapped
    assert read <= set(v1.RUNNER_ATTRIBUTES), (
        f"the proposer reads runner attributes {sorted(read - set(v1.RUNNER_ATTRIBUTES))} "
        "that the ledger (RUNNER_ATTRIBUTES) does not list"
    )
    known = assigned_attributes(GPUModelRunner)
    for name in v1.RUNNER_ATTRIBUTES:
        assert name in known, f"ledger RUNNER_ATTRIBUTES: GPUModelRunner no longer sets {name!r}"


@pytest.mark.parametrize(
    ("cls", "names"),
    [
        (InputBatch, v1.INPUT_BATCH_ATTRIBUTES),
        (CachedRequestState, v1.REQUEST_STATE_ATTRIBUTES),
    ],
    ids=["InputBatch", "CachedRequestState"],
)
def test_batch_and_request_attributes(cls: type, names: tuple[str, ...]) -> None:
    known = assigned_attributes(cls)
    for name in names:
        assert name in known, f"ledger: vLLM's {cls.__name__} no longer has {name!r}"


def test_sampling_params_attributes() -> None:
    from vllm import SamplingParams

    known = assigned_attributes(SamplingParams)
    for name in v1.SAMPLING_PARAMS_ATTRIBUTES:
        assert name in known, f"ledger SAMPLING_PARAMS_ATTRIBUTES: SamplingParams has no {name!r}"


def test_sampling_metadata_attributes() -> None:
    from vllm.v1.sample.metadata import SamplingMetadata

    known = assigned_attributes(SamplingMetadata)
    for name in v1.SAMPLING_METADATA_ATTRIBUTES:
        assert name in known, f"ledger SAMPLING_METADATA_ATTRIBUTES: no {name!r} in vLLM's"


def test_every_runtime_vllm_import_is_in_the_internals_table() -> None:
    from vllm_vispec.patches.internals import INTERNALS

    listed = {internal.symbol for internal in INTERNALS}
    missing = runtime_vllm_imports(skip=("runners/v2",)) - listed
    assert not missing, f"the runtime imports {sorted(missing)}: add them to patches/internals.py"


def test_internals_resolve_with_theirparameters() -> None:
    from vllm_vispec.patches.internals import ATTRIBUTES, INTERNALS

    for internal in INTERNALS:
        try:
            obj = resolve(internal.symbol)
        except (ImportError, AttributeError) as e:
            pytest.fail(
                f"internals table: {internal.symbol} is gone ({e}); used by "
                f"{internal.used_by} for: {internal.why}"
            )
        if internal.parameters is not None:
            assert parameters(obj) == internal.parameters, (
                f"internals table: vLLM's {internal.symbol} now takes {parameters(obj)}; "
                f"update {internal.used_by}"
            )
    for symbol, names in ATTRIBUTES.items():
        known = assigned_attributes(resolve(symbol))
        for name in names:
            assert name in known, f"internals ATTRIBUTES: vLLM's {symbol} has no {name!r}"


def test_kv_cache_layouts_the_kernels_read() -> None:
    """The plugin's attention reads the per-layer KV views vLLM hands each backend: on CPU a
    contiguous [blocks, KV heads, block size, 2 x head size] slab (``split_kv_cache`` views it,
    ``vec``/``vec16`` ISAs only); with the Triton backend any layout vLLM resolves, through
    the view's strides. A vLLM that lets the CPU backend take another layout, or pins Triton's
    to one, changes what the kernels must read."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend
    from vllm.v1.attention.backends.triton_attn import TritonAttentionBackend
    from vllm.v1.kv_cache_layout import KVCacheLayout

    assert CPUAttentionBackend.supported_kv_cache_layouts() == (KVCacheLayout.LBHNC,)
    assert TritonAttentionBackend.supported_kv_cache_layouts() is None
    assert KVCacheLayout.LBHNC.layer_view_order == (0, 1, 2, 3)  # [B, H, N, C], contiguous
