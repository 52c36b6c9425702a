"""Tree speculation over the paged KV cache: tree-masked attention and KV slot compaction.

``tree_paged_attention`` scores every node of a draft tree at once: each query row sees its
request's visible context (unseen image positions skipped, as in the draft's attention) plus
the tree nodes set in its int64 bitmask (its ancestors and itself). ``compact_kv`` then moves the
accepted nodes' K/V to the slots a chain would have used. Triton on CUDA tensors, the readable
PyTorch references (``naive.py``) elsewhere. ``VerifyAttention`` is the target's per-step
dispatcher over the same kernel and a batched CPU path (``verify.py``).
"""

from __future__ import annotations

import torch

from .masks import ancestor_masks
from .naive import naive_compact_kv, naive_tree_paged_attention
from .verify import VerifyAttention

__all__ = [
    "MAX_NODES",
    "VerifyAttention",
    "ancestor_masks",
    "compact_kv",
    "naive_compact_kv",
    "naive_tree_paged_attention",
    "tree_paged_attention",
]

MAX_NODES = 64  # bits of an int64 row mask


def tree_paged_attention(
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
    use_triton: bool | None = None,
) -> torch.Tensor:
    """Attention of tree rows over their visible context and bit-selected tree nodes -> [T, nh, hd].

    Args:
        q: [T, nh, hd] query rows, requests back to back per ``query_start_loc`` [B+1].
        k_cache, v_cache: [num_blocks, block_size, nkv, hd] views, any strides (see
            :func:`~vllm_vispec.kernels.split_kv_cache`); same dtype as q; nh % nkv == 0.
        block_table: [B, max_blocks] physical block ids; raw position p of request b lives at
            block block_table[b, p // block_size], offset p % block_size.
        context_lens: [B]; every row of request b sees raw positions [0, context_lens[b]) except
            unseen ones.
        node_pos: [B, M] raw positions of the tree nodes, M <= 64, all >= context_lens[b] and
            distinct; entries no row selects are never read (may be anything).
        row_masks: [T] int64; bit j (63 included, as a negative value) set: the row also sees
            node j of its request.
        unseen_start, unseen_end: [S] context positions [start, end) to skip, sorted and
            disjoint within each request; cu_unseen [B+1] gives each request's slice of them.
        scale: softmax scale.
        max_query_len: most rows of one request, if known (saves a device sync on the Triton
            path).
        use_triton: defaults to ``q.is_cuda``; forcing it on CPU tensors needs TRITON_INTERPRET=1
            set before Triton is first imported.

    A row that sees no visible key gets a zero output.
    """
    if node_pos.shape[1] > MAX_NODES:
        raise ValueError(f"a tree has at most {MAX_NODES} nodes, node_pos has {node_pos.shape[1]}")
    args = (q, k_cache, v_cache, query_start_loc, block_table, context_lens, node_pos, row_masks)
    unseen = (unseen_start, unseen_end, cu_unseen)
    if q.is_cuda if use_triton is None else use_triton:
        from .paged import tree_paged_attention_triton

        return tree_paged_attention_triton(*args, *unseen, scale, max_query_len=max_query_len)
    return naive_tree_paged_attention(*args, *unseen, scale)


def compact_kv(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    src_slots: torch.Tensor,
    dst_slots: torch.Tensor,
    *,
    use_triton: bool | None = None,
) -> None:
    """Copy the K/V of slot src_slots[i] to dst_slots[i] in place, every read before any write.

    Slots are block * block_size + offset (all heads move). A source may be another pair's
    destination; src == dst is a no-op; destinations must be distinct. ``k_cache``/``v_cache`` are
    strided views as from :func:`~vllm_vispec.kernels.split_kv_cache`, written through.
    ``use_triton`` defaults to ``k_cache.is_cuda`` (see :func:`tree_paged_attention`).
    """
    if k_cache.is_cuda if use_triton is None else use_triton:
        from .compact import compact_kv_triton

        compact_kv_triton(k_cache, v_cache, src_slots, dst_slots)
    else:
        naive_compact_kv(k_cache, v_cache, src_slots, dst_slots)
