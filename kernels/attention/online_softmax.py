"""Triton pieces shared by the paged attention kernels (the draft's here, the tree's in ``tree``).

Both launch one program per (request, block of queries, KV head), stack a GQA group's query
heads as rows so one K/V tile serves the whole group, and fold keys into an online softmax: a
running max ``m``, sum ``l`` and unnormalised output ``acc`` per row, in log2 units (exp2). The
context pass is the same in both: walk the visible runs between a request's unseen intervals
and load only the pages they touch, so pages wholly inside a unseen interval are never read.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def query_block(query_start_ptr):
    """This program's request, block of queries and KV head, and the request's first query
    token and query count (the launchers' grid: batch x query blocks x KV heads)."""
    req = tl.program_id(0)
    q_start = tl.load(query_start_ptr + req)
    q_len = tl.load(query_start_ptr + req + 1) - q_start
    return req, tl.program_id(1), tl.program_id(2), q_start, q_len


@triton.jit
def load_query_rows(
    q_ptr,
    q_start,
    q_len,
    q_block,
    kv_head,
    head_dim,
    stride_qt,
    stride_qh,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    HD_PAD: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """The block's rows (query-major, the group's heads padded to GROUP_PAD) as q
    [BLOCK_Q * GROUP_PAD, HD_PAD], with each row's query index, token (int64), head and mask."""
    rows = tl.arange(0, BLOCK_Q * GROUP_PAD)
    q_idx = q_block * BLOCK_Q + rows // GROUP_PAD
    head = kv_head * GROUP + rows % GROUP_PAD
    row_mask = (q_idx < q_len) & (rows % GROUP_PAD < GROUP)
    dims = tl.arange(0, HD_PAD)
    q_tok = (q_start + q_idx).to(tl.int64)
    q = tl.load(
        q_ptr + q_tok[:, None] * stride_qt + head[:, None] * stride_qh + dims[None, :],
        mask=row_mask[:, None] & (dims < head_dim)[None, :],
        other=0.0,
    )
    if UPCAST:
        q = q.to(tl.float32)
    return q, q_idx, q_tok, head, row_mask


@triton.jit
def attend(
    q,
    k,
    v,
    seen,
    m_run,
    l_run,
    acc,
    scale_log2,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """One online-softmax step of rows ``q`` over keys ``k`` [HD, N] / values ``v`` [N, HD]."""
    if UPCAST:
        k = k.to(tl.float32)
    s = tl.dot(q, k, input_precision=PRECISION) * scale_log2
    s = tl.where(seen, s, float("-inf"))
    m_new = tl.maximum(m_run, tl.max(s, axis=1))
    # A row that has seen no visible key yet keeps m = -inf: subtract 0 instead.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - m_safe[:, None])
    alpha = tl.exp2(m_run - m_safe)
    l_run = l_run * alpha + tl.sum(p, axis=1)
    p = p.to(v.dtype)
    if UPCAST:
        p = p.to(tl.float32)
        v = v.to(tl.float32)
    acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=PRECISION)
    return m_new, l_run, acc


@triton.jit
def attend_visible_context(
    q, q_pos, kv_end,
    k_head, v_head, table,
    unseen_start_ptr, unseen_end_ptr, cu_unseen_ptr, req,
    head_dim, scale_log2,
    stride_kb, stride_ks, stride_kd,
    stride_vb, stride_vs, stride_vd,
    HD_PAD: tl.constexpr, PAGE: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    """Online softmax of the rows over request ``req``'s visible positions below ``kv_end`` ->
    (m, l, acc), from an empty state.

    ``k_head``/``v_head`` point at the program's KV head, ``table`` at the request's block table
    row. ``q_pos`` is each row's position, masking later keys (causal); None when every row
    sees the whole context.
    """
    m_run = tl.full([q.shape[0]], float("-inf"), dtype=tl.float32)
    l_run = tl.zeros([q.shape[0]], dtype=tl.float32)
    acc = tl.zeros([q.shape[0], HD_PAD], dtype=tl.float32)
    offs = tl.arange(0, PAGE)
    first_hidden = tl.load(cu_unseen_ptr + req)
    n_hidden = tl.load(cu_unseen_ptr + req + 1) - first_hidden
    run_lo = 0  # visible run i spans [end of unseen i-1, start of unseen i)
    for i in range(0, n_hidden + 1):
        has_next = i < n_hidden
        run_hi = tl.load(unseen_start_ptr + first_hidden + i, mask=has_next, other=kv_end)
        run_hi = tl.minimum(run_hi, kv_end)
        if run_lo < run_hi:
            m_run, l_run, acc = attend_run(
                q, q_pos, run_lo, run_hi, offs, k_head, v_head, table, head_dim, scale_log2,
                m_run, l_run, acc,
                stride_kb, stride_ks, stride_kd, stride_vb, stride_vs, stride_vd,
                HD_PAD, PAGE, PRECISION, UPCAST,
            )  # fmt: skip
        run_lo = tl.load(unseen_end_ptr + first_hidden + i, mask=has_next, other=kv_end)
    return m_run, l_run, acc


@triton.jit
def attend_run(
    q, q_pos, run_lo, run_hi, offs,
    k_head, v_head, table, head_dim, scale_log2,
    m_run, l_run, acc,
    stride_kb, stride_ks, stride_kd,
    stride_vb, stride_vs, stride_vd,
    HD_PAD: tl.constexpr, PAGE: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    """Fold the keys at positions [run_lo, run_hi) into the online softmax (m, l, acc), a page
    at a time: only the pages the run touches are read, slots outside it are masked.

    ``offs`` is ``tl.arange(0, PAGE)`` from the caller, made once outside its loop over runs
    (made here, inside the caller's branch, the compiler would rebuild it for every run).
    """
    dims = tl.arange(0, HD_PAD)
    d_mask = dims < head_dim
    for page in range(run_lo // PAGE, tl.cdiv(run_hi, PAGE)):
        block = tl.load(table + page).to(tl.int64)
        pos = page * PAGE + offs
        valid = (pos >= run_lo) & (pos < run_hi)
        k = tl.load(
            k_head + block * stride_kb + offs[None, :] * stride_ks + dims[:, None] * stride_kd,
            mask=valid[None, :] & d_mask[:, None],
            other=0.0,
        )
        v = tl.load(
            v_head + block * stride_vb + offs[:, None] * stride_vs + dims[None, :] * stride_vd,
            mask=valid[:, None] & d_mask[None, :],
            other=0.0,
        )
        seen = valid[None, :]
        if q_pos is not None:
            seen = seen & (pos[None, :] <= q_pos[:, None])
        m_run, l_run, acc = attend(q, k, v, seen, m_run, l_run, acc, scale_log2, PRECISION, UPCAST)
    return m_run, l_run, acc


@triton.jit
def store_rows(
    o_ptr,
    acc,
    l_run,
    q_tok,
    head,
    row_mask,
    head_dim,
    stride_ot,
    stride_oh,
    HD_PAD: tl.constexpr,
):
    """Normalise the rows' output and store it; a row that saw no key gets 0 (its acc)."""
    dims = tl.arange(0, HD_PAD)
    out = acc / tl.where(l_run == 0.0, 1.0, l_run)[:, None]
    tl.store(
        o_ptr + q_tok[:, None] * stride_ot + head[:, None] * stride_oh + dims[None, :],
        out.to(o_ptr.dtype.element_ty),
        mask=row_mask[:, None] & (dims < head_dim)[None, :],
    )
