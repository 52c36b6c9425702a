"""Triton paged attention for the ViSpec draft that never reads unseen image positions.

One program per (request, block of queries, KV head), queries of a GQA group stacked as rows.
Instead of walking every page and masking, a program walks the *visible runs* of its request,
the gaps between unseen intervals, and only the pages each run touches: pages fully inside a
unseen interval are never loaded, and pages cut by an interval or by causality are masked. The
pieces (this loop, the online softmax, the query rows) are in :mod:`.online_softmax`, shared with
the tree kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import LOG2E, head_strides, launch_layout, unseen_bounds
from .online_softmax import attend_visible_context, load_query_rows, query_block, store_rows


@triton.jit
def _draft_attention_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr,
    query_start_ptr, seq_lens_ptr, block_table_ptr,
    unseen_start_ptr, unseen_end_ptr, cu_unseen_ptr,
    scale_log2, head_dim,
    stride_qt, stride_qh,
    stride_kb, stride_ks, stride_kh, stride_kd,
    stride_vb, stride_vs, stride_vh, stride_vd,
    stride_ot, stride_oh,
    stride_bt,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, BLOCK_Q: tl.constexpr, HD_PAD: tl.constexpr,
    PAGE: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    req, q_block, kv_head, q_start, q_len = query_block(query_start_ptr)
    if q_block * BLOCK_Q >= q_len:
        return
    context = tl.load(seq_lens_ptr + req) - q_len
    q, q_idx, q_tok, head, row_mask = load_query_rows(
        q_ptr, q_start, q_len, q_block, kv_head, head_dim, stride_qt, stride_qh,
        GROUP, GROUP_PAD, BLOCK_Q, HD_PAD, UPCAST,
    )  # fmt: skip
    # Keys at or past kv_end are causally invisible to every query of this block.
    kv_end = context + tl.minimum((q_block + 1) * BLOCK_Q, q_len)
    m_run, l_run, acc = attend_visible_context(
        q, context + q_idx, kv_end,
        k_ptr + kv_head * stride_kh, v_ptr + kv_head * stride_vh,
        block_table_ptr + req.to(tl.int64) * stride_bt,
        unseen_start_ptr, unseen_end_ptr, cu_unseen_ptr, req, head_dim, scale_log2,
        stride_kb, stride_ks, stride_kd, stride_vb, stride_vs, stride_vd,
        HD_PAD, PAGE, PRECISION, UPCAST,
    )  # fmt: skip
    store_rows(o_ptr, acc, l_run, q_tok, head, row_mask, head_dim, stride_ot, stride_oh, HD_PAD)


def draft_paged_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_table: torch.Tensor,
    unseen_start: torch.Tensor,
    unseen_end: torch.Tensor,
    cu_unseen: torch.Tensor,
    scale: float,
    *,
    max_query_len: int | None = None,
) -> torch.Tensor:
    """Triton version of :func:`~.naive.naive_draft_paged_attention` (same arguments).

    ``max_query_len`` (longest q_len in the batch) avoids a device sync when given.
    """
    out = q.new_empty(q.shape)
    batch = seq_lens.numel()
    if q.shape[0] == 0 or batch == 0:
        return out
    # Rows = queries x heads of a group: at most 64, to bound registers.
    grid, meta = launch_layout(q, k_cache, query_start_loc, batch, max_query_len, max_rows=64)
    unseen_start, unseen_end = unseen_bounds(unseen_start, unseen_end, q.device)
    # One integer type for the loop-carried run bounds (no-ops for vLLM's int32 metadata).
    query_start_loc, seq_lens, unseen_start, unseen_end, cu_unseen = (
        t.to(torch.int32) for t in (query_start_loc, seq_lens, unseen_start, unseen_end, cu_unseen)
    )
    q = q if q.stride(-1) == 1 else q.contiguous()
    _draft_attention_kernel[grid](
        q,
        k_cache,
        v_cache,
        out,
        query_start_loc,
        seq_lens,
        block_table,
        unseen_start,
        unseen_end,
        cu_unseen,
        scale * LOG2E,
        q.shape[2],
        *head_strides(q, k_cache, v_cache, out),
        block_table.stride(0),
        **meta,
    )
    return out
