"""Readable references of tree attention over the paged cache and of KV slot compaction.

Tree attention: per request, gather the K/V of its visible context positions and of the tree
nodes some row selects, then softmax attention where each row sees the whole visible context plus
the nodes whose bits are set in its mask. Hidden positions are never gathered (zero weight).
"""

from __future__ import annotations

import torch

from ..attention.naive import masked_attention


def naive_tree_paged_attention(
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
) -> torch.Tensor:
    """Attention of tree rows over their request's visible context and selected tree nodes.

    Args:
        q: [T, nh, hd], requests back to back (``query_start_loc`` [B + 1]).
        k_cache, v_cache: [num_blocks, block_size, nkv, hd], any strides; nh % nkv == 0.
        block_table: [B, max_blocks] physical block of each logical block.
        context_lens: [B]; every row of request b sees raw positions [0, context_lens[b]).
        node_pos: [B, M] raw positions of the tree nodes (M <= 64); unselected entries unused.
        row_masks: [T] int64; bit j set: the row also sees node j (at node_pos[b, j]).
        unseen_start, unseen_end, cu_unseen: request b hides context positions
            [unseen_start[i], unseen_end[i]) for i in cu_unseen[b] ... cu_unseen[b+1]-1.
        scale: softmax scale.

    Returns:
        [T, nh, hd] in q's dtype; a row that sees no visible key gets zeros.
    """
    block_size = k_cache.shape[1]
    compute = torch.promote_types(q.dtype, torch.float32)
    device = k_cache.device
    out = torch.zeros_like(q)
    starts, ctx_lens, cu = query_start_loc.tolist(), context_lens.tolist(), cu_unseen.tolist()
    hs, he = unseen_start.tolist(), unseen_end.tolist()
    bit_ids = torch.arange(node_pos.shape[1], device=device)
    for b, context in enumerate(ctx_lens):
        q_lo, q_hi = starts[b], starts[b + 1]
        if q_hi == q_lo:
            continue
        visible = torch.ones(context, dtype=torch.bool, device=device)
        for i in range(cu[b], cu[b + 1]):
            visible[hs[i] : he[i]] = False
        sees_node = ((row_masks[q_lo:q_hi, None].to(device) >> bit_ids) & 1) == 1  # [n_q, M]
        used = sees_node.any(dim=0)  # only these node positions are meaningful
        ctx_pos = torch.arange(context, device=device)[visible]
        kv_pos = torch.cat([ctx_pos, node_pos[b].to(device).long()[used]])
        sees_ctx = torch.ones(q_hi - q_lo, len(ctx_pos), dtype=torch.bool, device=device)
        seen = torch.cat([sees_ctx, sees_node[:, used]], dim=1)  # [n_q, n_kv]
        blocks = block_table[b].to(device).long()[kv_pos // block_size]
        k = k_cache[blocks, kv_pos % block_size].to(compute)  # [n_kv, nkv, hd]
        v = v_cache[blocks, kv_pos % block_size].to(compute)
        attn = masked_attention(q[q_lo:q_hi].to(compute), k, v, seen, scale)
        out[q_lo:q_hi] = attn.to(q.dtype)
    return out


def naive_compact_kv(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    src_slots: torch.Tensor,
    dst_slots: torch.Tensor,
) -> None:
    """Copy K and V of slot src_slots[i] to dst_slots[i] in place, all reads before any write.

    Slots are block * block_size + offset; ``k_cache``/``v_cache`` are [num_blocks, block_size,
    nkv, hd] views with any strides, written through (never a copy). dst slots must be distinct.
    """
    block_size = k_cache.shape[1]
    src, dst = src_slots.to(k_cache.device).long(), dst_slots.to(k_cache.device).long()
    for cache in (k_cache, v_cache):
        moved = cache[src // block_size, src % block_size]  # advanced indexing copies: reads done
        cache[dst // block_size, dst % block_size] = moved
