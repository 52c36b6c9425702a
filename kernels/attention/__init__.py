"""Paged attention for the ViSpec draft, with each image's unseen positions left out.

Inside an image only the last num_q-1 raw positions (the compressed image tokens) exist for the
draft; the caller passes the other positions as unseen intervals. The Triton kernel (CUDA tensors)
does not even read pages that are fully unseen; the PyTorch path (elsewhere) gathers only the
visible positions. Both read K/V from vLLM's paged cache through the block table, at raw positions.
"""

from __future__ import annotations

import torch

from .naive import naive_draft_paged_attention

__all__ = [
    "CPU_KV_LAYOUT_ISAS",
    "draft_paged_attention",
    "layer_kv_cache",
    "naive_draft_paged_attention",
    "split_kv_cache",
]

# vLLM CPU attention ISAs whose KV layout split_kv_cache reads (start-up refuses the others).
CPU_KV_LAYOUT_ISAS = ("vec", "vec16")


def draft_paged_attention(
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
    use_triton: bool | None = None,
) -> torch.Tensor:
    """Causal draft attention over the paged KV cache, skipping unseen intervals -> [T, nh, hd].

    Args:
        q: [T, nh, hd] scheduled queries, requests back to back per ``query_start_loc`` [B+1];
            request b's queries sit at raw positions seq_lens[b] - q_len_b ... seq_lens[b] - 1
            (prefill chunks and decode alike).
        k_cache, v_cache: [num_blocks, block_size, nkv, hd] views, any strides (see
            :func:`split_kv_cache`); same dtype as q; nh must be a multiple of nkv.
        seq_lens: [B] cached tokens per request, the scheduled ones included.
        block_table: [B, max_blocks] physical block ids.
        unseen_start, unseen_end: [S] raw positions [start, end) invisible to the draft, sorted
            and disjoint within each request; cu_unseen [B+1] gives each request's slice of them.
        scale: softmax scale.
        max_query_len: longest q_len, if known (saves a device sync on the Triton path).
        use_triton: defaults to ``q.is_cuda``; forcing it on CPU tensors needs TRITON_INTERPRET=1
            set before Triton is first imported.

    A query whose earlier positions are all unseen gets a zero output.
    """
    args = (q, k_cache, v_cache, query_start_loc, seq_lens, block_table)
    unseen = (unseen_start, unseen_end, cu_unseen)
    if q.is_cuda if use_triton is None else use_triton:
        from .paged import draft_paged_attention_triton

        return draft_paged_attention_triton(*args, *unseen, scale, max_query_len=max_query_len)
    return naive_draft_paged_attention(*args, *unseen, scale)


def split_kv_cache(
    kv_cache: torch.Tensor, cpu_isa: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V views [num_blocks, block_size, nkv, hd] of one layer's vLLM 0.32 KV cache.

    vLLM 0.32 allocates [num_blocks, nkv, block_size, 2 * hd] per layer. The GPU backends
    (FlashAttention, Triton) keep K and V as the two halves of the last dim. The CPU backend's
    ``vec`` and ``vec16`` ISAs view each (block, head) slab as [2 * block_size, hd] and store K
    transposed ([hd, block_size]) in the first half, V plainly in the second; pass its ISA
    (``layer.isa``) as ``cpu_isa``. Its ``amx`` layout is tiled and not supported.
    """
    num_blocks, num_kv_heads, block_size, width = kv_cache.shape
    head_dim = width // 2
    if cpu_isa is None:
        k, v = kv_cache.transpose(1, 2).split(head_dim, dim=-1)
        return k, v
    if cpu_isa not in CPU_KV_LAYOUT_ISAS:
        raise NotImplementedError(f"CPU attention ISA {cpu_isa!r} has an unsupported KV layout")
    slab = kv_cache.view(num_blocks, num_kv_heads, 2, block_size * head_dim)
    k = slab[:, :, 0].unflatten(-1, (head_dim, block_size)).permute(0, 3, 1, 2)
    v = slab[:, :, 1].unflatten(-1, (block_size, head_dim)).transpose(1, 2)
    return k, v


def layer_kv_cache(
    layer: torch.nn.Module, kv_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V views of a vLLM attention ``layer``'s ``kv_cache`` (its CPU ISA, if any)."""
    return split_kv_cache(kv_cache, getattr(layer, "isa", None))
