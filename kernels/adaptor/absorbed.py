"""The vision adaptor with k_proj folded into the queries (PyTorch path, used on CPU).

Because the adaptor's queries are constants, ``q_h · (W_k,h x + b_k,h)`` equals
``x · (W_k,hᵀ q_h)`` plus a per-(head, query) constant that cancels in the softmax. Pooling the raw
embeddings with those weights and applying ``v_proj`` afterwards (valid because the weights sum to
one) costs O(N·H·num_q·nh) instead of the O(N·H²) needed to project every image token.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def absorb_queries(q: torch.Tensor, k_weight: torch.Tensor) -> torch.Tensor:
    """Fold k_proj and the 1/sqrt(hd) scale into the queries: [num_q, nh, hd] -> [num_q, nh, H].

    Depends on weights only: compute it once after loading and reuse it for every image. Kept in
    fp32 because the scores it produces go through an exponential.
    """
    num_q, nh, hd = q.shape
    w = torch.einsum("jhd,hdk->jhk", q.float(), k_weight.float().view(nh, hd, -1))
    return w / math.sqrt(hd)


def pool_images_torch(x: torch.Tensor, cu_seqlens: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Per image and (query, head): softmax over the image's tokens of ``x · w``, then ``pᵀ x``.

    Computes and returns [B, num_q, nh, H] in the dtype of ``w`` (fp32 from absorb_queries).
    """
    num_q, nh, hidden = w.shape
    rows = w.reshape(num_q * nh, hidden)
    bounds = cu_seqlens.tolist()
    pooled = w.new_empty(len(bounds) - 1, num_q, nh, hidden)
    for b, (start, end) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        xi = x[start:end].to(w.dtype)
        probs = torch.softmax(xi @ rows.T, dim=0)  # [n, num_q * nh]
        pooled[b] = (probs.T @ xi).view(num_q, nh, hidden)
    return pooled


def project_pooled(
    pooled: torch.Tensor,
    v_weight: torch.Tensor,
    o_weight: torch.Tensor,
    v_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply each head's slice of v_proj to its pooled embedding, then o_proj -> [B, num_q, H].

    ``b_v`` is added unchanged since the softmax weights sum to one. Runs in the weights' dtype.
    """
    batch, num_q, nh, hidden = pooled.shape
    heads = torch.einsum(
        "bjhk,hdk->bjhd", pooled.to(v_weight.dtype), v_weight.view(nh, hidden // nh, hidden)
    )
    if v_bias is not None:
        heads = heads + v_bias.view(nh, hidden // nh)
    return F.linear(heads.reshape(batch, num_q, hidden), o_weight)
