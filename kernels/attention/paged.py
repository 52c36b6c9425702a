"""Triton paged attention for the ViSpec draft that never reads hidden image positions.

One program per (request, block of queries, KV head), queries of a GQA group stacked as rows.
Instead of walking every page and masking, a program walks the *visible runs* of its request,
the gaps between hidden intervals, and only the pages each run touches: pages fully inside a
hidden interval are never loaded, and pages cut by an interval or by causality are masked.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton import dot_precision, upcast_dot_operands


@triton.jit
def _draft_attention_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    o_ptr,
    query_start_ptr,
    seq_lens_ptr,
    block_table_ptr,
    hidden_start_ptr,
    hidden_end_ptr,
    cu_hidden_ptr,
    scale_log2,
    head_dim,
    stride_qt,
    stride_qh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_kd,
    stride_vb,
    stride_vs,
    stride_vh,
    stride_vd,
    stride_ot,
    stride_oh,
    stride_bt,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    HD_PAD: tl.constexpr,
    PAGE: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    req = tl.program_id(0)
    q_block = tl.program_id(1)
    kv_head = tl.program_id(2)
    q_start = tl.load(query_start_ptr + req)
    q_len = tl.load(query_start_ptr + req + 1) - q_start
    if q_block * BLOCK_Q >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + req)
    context = seq_len - q_len

    rows = tl.arange(0, BLOCK_Q * GROUP_PAD)
    q_idx = q_block * BLOCK_Q + rows // GROUP_PAD
    head = kv_head * GROUP + rows % GROUP_PAD
    row_mask = (q_idx < q_len) & (rows % GROUP_PAD < GROUP)
    q_pos = context + q_idx
    dims = tl.arange(0, HD_PAD)
    d_mask = dims < head_dim
    q_tok = (q_start + q_idx).to(tl.int64)
    q = tl.load(
        q_ptr + q_tok[:, None] * stride_qt + head[:, None] * stride_qh + dims[None, :],
        mask=row_mask[:, None] & d_mask[None, :],
        other=0.0,
    )
    if UPCAST:
        q = q.to(tl.float32)
    # Keys at or past kv_end are causally invisible to every query of this block.
    kv_end = context + tl.minimum((q_block + 1) * BLOCK_Q, q_len)

    m_run = tl.full([BLOCK_Q * GROUP_PAD], float("-inf"), dtype=tl.float32)
    l_run = tl.zeros([BLOCK_Q * GROUP_PAD], dtype=tl.float32)
    acc = tl.zeros([BLOCK_Q * GROUP_PAD, HD_PAD], dtype=tl.float32)
    offs = tl.arange(0, PAGE)
    k_head = k_ptr + kv_head * stride_kh
    v_head = v_ptr + kv_head * stride_vh
    table = block_table_ptr + req.to(tl.int64) * stride_bt
    first_hidden = tl.load(cu_hidden_ptr + req)
    n_hidden = tl.load(cu_hidden_ptr + req + 1) - first_hidden
    run_lo = 0  # visible run i spans [end of hidden i-1, start of hidden i)
    for i in range(0, n_hidden + 1):
        has_next = i < n_hidden
        run_hi = tl.load(hidden_start_ptr + first_hidden + i, mask=has_next, other=seq_len)
        run_hi = tl.minimum(run_hi, kv_end)
        if run_lo < run_hi:
            for page in range(run_lo // PAGE, tl.cdiv(run_hi, PAGE)):
                block = tl.load(table + page).to(tl.int64)
                pos = page * PAGE + offs
                valid = (pos >= run_lo) & (pos < run_hi)
                k = tl.load(
                    k_head
                    + block * stride_kb
                    + offs[None, :] * stride_ks
                    + dims[:, None] * stride_kd,
                    mask=valid[None, :] & d_mask[:, None],
                    other=0.0,
                )
                if UPCAST:
                    k = k.to(tl.float32)
                s = tl.dot(q, k, input_precision=PRECISION) * scale_log2
                s = tl.where(valid[None, :] & (pos[None, :] <= q_pos[:, None]), s, float("-inf"))
                m_new = tl.maximum(m_run, tl.max(s, axis=1))
                # A row that has seen no visible key yet keeps m = -inf: subtract 0 instead.
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                p = tl.exp2(s - m_safe[:, None])
                alpha = tl.exp2(m_run - m_safe)
                l_run = l_run * alpha + tl.sum(p, axis=1)
                v = tl.load(
                    v_head
                    + block * stride_vb
                    + offs[:, None] * stride_vs
                    + dims[None, :] * stride_vd,
                    mask=valid[:, None] & d_mask[None, :],
                    other=0.0,
                )
                p = p.to(v.dtype)
                if UPCAST:
                    p = p.to(tl.float32)
                    v = v.to(tl.float32)
                acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=PRECISION)
                m_run = m_new
        run_lo = tl.load(hidden_end_ptr + first_hidden + i, mask=has_next, other=seq_len)

    out = acc / tl.where(l_run == 0.0, 1.0, l_run)[:, None]  # no visible key: acc is 0
    tl.store(
        o_ptr + q_tok[:, None] * stride_ot + head[:, None] * stride_oh + dims[None, :],
        out.to(o_ptr.dtype.element_ty),
        mask=row_mask[:, None] & d_mask[None, :],
    )


def draft_paged_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_table: torch.Tensor,
    hidden_start: torch.Tensor,
    hidden_end: torch.Tensor,
    cu_hidden: torch.Tensor,
    scale: float,
    *,
    max_query_len: int | None = None,
) -> torch.Tensor:
    """Triton version of :func:`~.naive.naive_draft_paged_attention` (same arguments).

    ``max_query_len`` (longest q_len in the batch) avoids a device sync when given.
    """
    num_tokens, num_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1:3]
    out = q.new_empty(q.shape)
    batch = seq_lens.numel()
    if num_tokens == 0 or batch == 0:
        return out
    if max_query_len is None:
        max_query_len = int((query_start_loc[1:] - query_start_loc[:-1]).max())
    if hidden_start.numel() == 0:  # masked loads still need a real pointer
        hidden_start = hidden_end = torch.zeros(1, dtype=torch.int32, device=q.device)
    # One integer type for the loop-carried run bounds (no-ops for vLLM's int32 metadata).
    query_start_loc, seq_lens, hidden_start, hidden_end, cu_hidden = (
        t.to(torch.int32) for t in (query_start_loc, seq_lens, hidden_start, hidden_end, cu_hidden)
    )
    group = num_heads // num_kv_heads
    group_pad = triton.next_power_of_2(group)
    # Rows = queries x heads of a group; at least 16 for tl.dot, at most 64 to bound registers.
    block_q = min(triton.next_power_of_2(max_query_len), max(1, 64 // group_pad))
    block_q = max(block_q, triton.cdiv(16, group_pad))
    q = q if q.stride(-1) == 1 else q.contiguous()
    grid = (batch, triton.cdiv(max_query_len, block_q), num_kv_heads)
    _draft_attention_kernel[grid](
        q,
        k_cache,
        v_cache,
        out,
        query_start_loc,
        seq_lens,
        block_table,
        hidden_start,
        hidden_end,
        cu_hidden,
        scale * 1.4426950408889634,  # log2(e): the kernel uses exp2
        head_dim,
        q.stride(0),
        q.stride(1),
        *k_cache.stride(),
        *v_cache.stride(),
        out.stride(0),
        out.stride(1),
        block_table.stride(0),
        GROUP=group,
        GROUP_PAD=group_pad,
        BLOCK_Q=block_q,
        HD_PAD=triton.next_power_of_2(head_dim),
        PAGE=block_size,
        PRECISION=dot_precision(q.dtype),
        UPCAST=upcast_dot_operands(q.dtype),
    )
    return out
