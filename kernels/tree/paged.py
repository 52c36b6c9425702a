"""Triton tree attention over the paged cache: the context unmasked, the tree nodes bit-masked.

One program per (request, block of query rows, KV head), the query heads of a GQA group stacked
as rows, so one pass over the context pages serves every row and head of the block. Rows only
differ in which tree nodes they see; the context is visible to all of them. So the mask is one
int64 per row (bit j: sees node j, a tree has at most 64 nodes), loaded once and bit-tested in
the kernel, rather than a dense [Q, context + Q] mask whose context part is all ones anyway.

The context loop is the draft kernel's (shared in :mod:`..attention.online_softmax`): walk the
visible runs between unseen intervals, never loading pages that are wholly unseen. Then the
nodes' K/V are gathered by position (up to 64 columns, one tile) and folded into the same online
softmax under each row's bits.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..attention.launch import LOG2E, head_strides, launch_layout, unseen_bounds
from ..attention.online_softmax import (
    attend,
    attend_visible_context,
    load_query_rows,
    query_block,
    store_rows,
)


@triton.jit
def _tree_attention_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr,
    query_start_ptr, block_table_ptr, context_lens_ptr, node_pos_ptr, row_masks_ptr,
    unseen_start_ptr, unseen_end_ptr, cu_unseen_ptr,
    scale_log2, head_dim, num_nodes,
    stride_qt, stride_qh,
    stride_kb, stride_ks, stride_kh, stride_kd,
    stride_vb, stride_vs, stride_vh, stride_vd,
    stride_ot, stride_oh,
    stride_bt, stride_nb,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, BLOCK_Q: tl.constexpr, HD_PAD: tl.constexpr,
    PAGE: tl.constexpr, NODES_PAD: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    req, q_block, kv_head, q_start, q_len = query_block(query_start_ptr)
    if q_block * BLOCK_Q >= q_len:
        return
    context = tl.load(context_lens_ptr + req)
    q, q_idx, q_tok, head, row_mask = load_query_rows(
        q_ptr, q_start, q_len, q_block, kv_head, head_dim, stride_qt, stride_qh,
        GROUP, GROUP_PAD, BLOCK_Q, HD_PAD, UPCAST,
    )  # fmt: skip
    k_head = k_ptr + kv_head * stride_kh
    v_head = v_ptr + kv_head * stride_vh
    table = block_table_ptr + req.to(tl.int64) * stride_bt

    # Context: every row sees every visible position, so no per-row mask (q_pos None).
    m_run, l_run, acc = attend_visible_context(
        q, None, context, k_head, v_head, table,
        unseen_start_ptr, unseen_end_ptr, cu_unseen_ptr, req, head_dim, scale_log2,
        stride_kb, stride_ks, stride_kd, stride_vb, stride_vs, stride_vd,
        HD_PAD, PAGE, PRECISION, UPCAST,
    )  # fmt: skip

    # Tree nodes: each row sees those set in its bits.
    m_run, l_run, acc = _attend_nodes(
        q, q_idx, q_tok, q_len, req, row_masks_ptr, node_pos_ptr, num_nodes, k_head, v_head,
        table, head_dim, scale_log2, m_run, l_run, acc, stride_nb,
        stride_kb, stride_ks, stride_kd, stride_vb, stride_vs, stride_vd,
        HD_PAD, PAGE, NODES_PAD, PRECISION, UPCAST,
    )  # fmt: skip
    store_rows(o_ptr, acc, l_run, q_tok, head, row_mask, head_dim, stride_ot, stride_oh, HD_PAD)


@triton.jit
def _attend_nodes(
    q, q_idx, q_tok, q_len, req,
    row_masks_ptr, node_pos_ptr, num_nodes,
    k_head, v_head, table, head_dim, scale_log2,
    m_run, l_run, acc,
    stride_nb,
    stride_kb, stride_ks, stride_kd,
    stride_vb, stride_vs, stride_vd,
    HD_PAD: tl.constexpr, PAGE: tl.constexpr, NODES_PAD: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    """Fold request ``req``'s tree nodes into the online softmax, each row seeing node j when bit
    j of its row mask is set. The nodes are one tile of up to 64 columns, gathered by position;
    a node no row of the block sees is not read."""
    cols = tl.arange(0, NODES_PAD)
    bits = tl.load(row_masks_ptr + q_tok, mask=q_idx < q_len, other=0)  # int64, bit 63 included
    seen = ((bits[:, None] >> cols[None, :].to(tl.int64)) & 1) == 1
    seen = seen & (cols < num_nodes)[None, :]
    used = tl.max(seen.to(tl.int32), axis=0) > 0
    node = tl.load(node_pos_ptr + req.to(tl.int64) * stride_nb + cols, mask=used, other=0)
    block = tl.load(table + node // PAGE, mask=used, other=0).to(tl.int64)
    slot = node % PAGE
    dims = tl.arange(0, HD_PAD)
    d_mask = dims < head_dim
    k = tl.load(
        k_head + block[None, :] * stride_kb + slot[None, :] * stride_ks + dims[:, None] * stride_kd,
        mask=used[None, :] & d_mask[:, None],
        other=0.0,
    )
    v = tl.load(
        v_head + block[:, None] * stride_vb + slot[:, None] * stride_vs + dims[None, :] * stride_vd,
        mask=used[:, None] & d_mask[None, :],
        other=0.0,
    )
    return attend(q, k, v, seen, m_run, l_run, acc, scale_log2, PRECISION, UPCAST)


def tree_paged_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    query_start_loc: torch.Tensor,
    block_table: torch.Tensor,
    context_lens: torch.Tensor,
    node_pos: torch.Tensor,
    row_masks: torch.Tensor,
    unseen_start: torch.Tensor,
    unseen_end: torch.Tensor,
    cu_unseen: torch.Tensor,
    scale: float,
    *,
    max_query_len: int | None = None,
) -> torch.Tensor:
    """Triton version of :func:`~.naive.naive_tree_paged_attention` (same arguments).

    ``max_query_len`` (most rows of a request in the batch) avoids a device sync when given.
    """
    out = q.new_empty(q.shape)
    batch = context_lens.numel()
    if q.shape[0] == 0 or batch == 0:
        return out
    # All of a request's rows in one program while they fit in 128 (64 for head dims above 128).
    max_rows = 128 if triton.next_power_of_2(q.shape[2]) <= 128 else 64
    grid, meta = launch_layout(q, k_cache, query_start_loc, batch, max_query_len, max_rows)
    unseen_start, unseen_end = unseen_bounds(unseen_start, unseen_end, q.device)
    num_nodes = node_pos.shape[1]
    node_pos, row_masks = _node_inputs(node_pos, row_masks, batch, q.device)
    # One integer type for the loop-carried run bounds (no-ops for vLLM's int32 metadata).
    query_start_loc, context_lens, unseen_start, unseen_end, cu_unseen = (
        t.to(torch.int32).contiguous()
        for t in (query_start_loc, context_lens, unseen_start, unseen_end, cu_unseen)
    )
    q = q if q.stride(-1) == 1 else q.contiguous()
    _tree_attention_kernel[grid](
        q,
        k_cache,
        v_cache,
        out,
        query_start_loc,
        block_table,
        context_lens,
        node_pos,
        row_masks,
        unseen_start,
        unseen_end,
        cu_unseen,
        scale * LOG2E,
        q.shape[2],
        num_nodes,
        *head_strides(q, k_cache, v_cache, out),
        block_table.stride(0),
        node_pos.stride(0),
        NODES_PAD=max(16, triton.next_power_of_2(num_nodes)),
        num_warps=8 if meta["BLOCK_Q"] * meta["GROUP_PAD"] * meta["HD_PAD"] >= 128 * 128 else 4,
        **meta,
    )
    return out


def _node_inputs(
    node_pos: torch.Tensor, row_masks: torch.Tensor, batch: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """node_pos as contiguous int32 (one unread column when there are no nodes: masked loads
    still need a real pointer) and row_masks as contiguous int64."""
    if node_pos.shape[1] == 0:
        node_pos = torch.zeros(batch, 1, dtype=torch.int32, device=device)
    return node_pos.to(torch.int32).contiguous(), row_masks.to(torch.int64).contiguous()
