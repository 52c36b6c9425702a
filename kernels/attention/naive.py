"""Readable reference of the draft's paged attention with unseen image positions (CPU path).

Per request: gather the K/V of its visible raw positions through the block table, then causal
softmax attention. Hidden positions are never gathered, so they get exactly zero weight.
"""

from __future__ import annotations

import torch


def naive_draft_paged_attention(
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
) -> torch.Tensor:
    """Causal attention of the scheduled queries over the paged cache, unseen intervals skipped.

    Args:
        q: [T, nh, hd], requests back to back (``query_start_loc`` [B + 1]); the queries of
            request b are its last q_len raw positions, seq_len - q_len ... seq_len - 1.
        k_cache, v_cache: [num_blocks, block_size, nkv, hd], any strides; nh % nkv == 0.
        seq_lens: [B] tokens in the KV cache per request, the scheduled ones included.
        block_table: [B, max_blocks] physical block of each logical block.
        unseen_start, unseen_end, cu_unseen: request b hides raw positions
            [unseen_start[i], unseen_end[i]) for i in cu_unseen[b] ... cu_unseen[b+1]-1.
        scale: softmax scale, usually hd ** -0.5.

    Returns:
        [T, nh, hd] in q's dtype; a query that sees no visible key (all earlier positions unseen)
        gets zeros.
    """
    block_size = k_cache.shape[1]
    compute = torch.promote_types(q.dtype, torch.float32)
    device = k_cache.device
    out = torch.zeros_like(q)
    starts, lens, cu = query_start_loc.tolist(), seq_lens.tolist(), cu_unseen.tolist()
    hs, he = unseen_start.tolist(), unseen_end.tolist()
    for b, seq_len in enumerate(lens):
        q_lo, q_hi = starts[b], starts[b + 1]
        if q_hi == q_lo:
            continue
        visible = torch.ones(seq_len, dtype=torch.bool, device=device)
        for i in range(cu[b], cu[b + 1]):
            visible[hs[i] : he[i]] = False
        kv_pos = torch.arange(seq_len, device=device)[visible]
        blocks = block_table[b].to(device).long()[kv_pos // block_size]
        k = k_cache[blocks, kv_pos % block_size].to(compute)  # [n_kv, nkv, hd]
        v = v_cache[blocks, kv_pos % block_size].to(compute)
        q_pos = torch.arange(seq_len - (q_hi - q_lo), seq_len, device=device)
        causal = kv_pos[None, :] <= q_pos[:, None]  # [n_q, n_kv]
        attn = masked_attention(q[q_lo:q_hi].to(compute), k, v, causal, scale)
        out[q_lo:q_hi] = attn.to(q.dtype)
    return out


def masked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seen: torch.Tensor, scale: float
) -> torch.Tensor:
    """Softmax attention of rows ``q`` [n_q, nh, hd] over ``k``/``v`` [n_kv, nkv, hd] (GQA:
    nh // nkv query heads per KV head), row i over the keys ``seen[i]`` [n_q, n_kv] marks.

    Returns [n_q, nh, hd]; a row that sees no key gets zeros, not the NaN of an all -inf softmax.
    """
    num_heads, head_dim = q.shape[1:]
    num_kv_heads = k.shape[1]
    qb = q.view(-1, num_kv_heads, num_heads // num_kv_heads, head_dim)
    scores = torch.einsum("qkgd,nkd->kgqn", qb, k) * scale
    probs = torch.softmax(scores.masked_fill(~seen, float("-inf")), dim=-1)
    probs = torch.where(seen.any(dim=-1)[:, None], probs, 0.0)
    attn = torch.einsum("kgqn,nkd->qkgd", probs, v)
    return attn.reshape(-1, num_heads, head_dim)
