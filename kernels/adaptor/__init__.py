"""ViSpec vision adaptor: learnable queries attending over each image's embeddings.

``vision_adaptor`` is the fast path (k_proj absorbed into the queries, Triton on CUDA tensors,
PyTorch elsewhere); ``naive_vision_adaptor`` is the reference it must match.

Typical use, with ``w`` computed once per set of weights::

    w = absorb_queries(q, k_weight)                          # [num_q, nh, H] fp32
    out = vision_adaptor(x, cu_seqlens, w, v_weight, o_weight, v_bias)   # [B, num_q, H]
"""

from __future__ import annotations

import torch

from .absorbed import absorb_queries, pool_images_torch, project_pooled
from .naive import naive_vision_adaptor

__all__ = [
    "absorb_queries",
    "naive_vision_adaptor",
    "pool_images",
    "project_pooled",
    "vision_adaptor",
]


def pool_images(
    x: torch.Tensor,
    cu_seqlens: torch.Tensor,
    w: torch.Tensor,
    *,
    max_seqlen: int | None = None,
    use_triton: bool | None = None,
) -> torch.Tensor:
    """Softmax-pool every image of ``x`` [N, H] (varlen, ``cu_seqlens`` [B+1]) -> [B, num_q, nh, H].

    ``use_triton`` defaults to ``x.is_cuda``; forcing it on CPU tensors needs TRITON_INTERPRET=1
    set before Triton is first imported (tests do this in a subprocess).
    """
    if x.is_cuda if use_triton is None else use_triton:
        from .pool import pool_images_triton

        return pool_images_triton(x, cu_seqlens, w, max_seqlen=max_seqlen)
    return pool_images_torch(x, cu_seqlens, w)


def vision_adaptor(
    x: torch.Tensor,
    cu_seqlens: torch.Tensor,
    w: torch.Tensor,
    v_weight: torch.Tensor,
    o_weight: torch.Tensor,
    v_bias: torch.Tensor | None = None,
    *,
    max_seqlen: int | None = None,
    use_triton: bool | None = None,
) -> torch.Tensor:
    """Adaptor outputs [B, num_q, H] for B images concatenated in ``x`` [N_total, H].

    Args:
        x: image embeddings, images back to back; each image needs at least one token.
        cu_seqlens: [B + 1] int offsets of the images in ``x`` (B may be 0).
        w: ``absorb_queries(q, k_weight)``; k_proj's bias is not needed (it cancels in softmax).
        v_weight, o_weight: nn.Linear weights [H, H]; v_bias: [H] or None.
        max_seqlen: longest image, if known (saves a device sync on the Triton path).
    """
    pooled = pool_images(x, cu_seqlens, w, max_seqlen=max_seqlen, use_triton=use_triton)
    return project_pooled(pooled, v_weight, o_weight, v_bias)
