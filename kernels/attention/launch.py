"""Launch-side pieces shared by the paged attention launchers (the draft's in :mod:`.paged`, the
tree's in ``tree.paged``): the grid and meta-parameters, and the arguments both kernels take alike.
"""

from __future__ import annotations

import torch
import triton

from .._triton import dot_precision, upcast_dot_operands

LOG2E = 1.4426950408889634  # the kernels use exp2: scale * LOG2E is the scale in log2 units


def launch_layout(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    query_start_loc: torch.Tensor,
    batch: int,
    max_query_len: int | None,
    max_rows: int,
) -> tuple[tuple[int, int, int], dict]:
    """Grid and meta-parameters of a launch of one program per (request, block of queries,
    KV head), whose rows are queries x heads of a GQA group: at most ``max_rows`` of them to bound
    registers, at least 16 for tl.dot. ``max_query_len`` None: read from ``query_start_loc``
    (a device sync)."""
    num_heads, head_dim = q.shape[1:]
    block_size, num_kv_heads = k_cache.shape[1:3]
    if max_query_len is None:
        max_query_len = int((query_start_loc[1:] - query_start_loc[:-1]).max())
    group = num_heads // num_kv_heads
    group_pad = triton.next_power_of_2(group)
    block_q = min(triton.next_power_of_2(max_query_len), max(1, max_rows // group_pad))
    block_q = max(block_q, triton.cdiv(16, group_pad))
    grid = (batch, triton.cdiv(max_query_len, block_q), num_kv_heads)
    meta = {
        "GROUP": group,
        "GROUP_PAD": group_pad,
        "BLOCK_Q": block_q,
        "HD_PAD": triton.next_power_of_2(head_dim),
        "PAGE": block_size,
        "PRECISION": dot_precision(q.dtype),
        "UPCAST": upcast_dot_operands(q.dtype),
    }
    return grid, meta


def unseen_bounds(
    unseen_start: torch.Tensor, unseen_end: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The unseen intervals' bounds; with none, one zero on ``device`` for both: the kernels'
    masked loads never read it, but still need a real pointer."""
    if unseen_start.numel() == 0:
        unseen_start = unseen_end = torch.zeros(1, dtype=torch.int32, device=device)
    return unseen_start, unseen_end


def head_strides(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, out: torch.Tensor
) -> tuple[int, ...]:
    """The kernels' stride arguments for q and out [T, nh, hd] and the caches [nb, bs, nkv, hd]
    (head dims are read contiguously from q and out)."""
    return (q.stride(0), q.stride(1), *k_cache.stride(), *v_cache.stride(), *out.stride()[:2])
