"""Readable reference of the ViSpec vision adaptor: project every image token, then attend.

This is the computation of ``imadpt`` as written in the ViSpec model; it is the oracle for the
absorbed paths and is not meant to be fast (it materialises K and V of shape [N, H]).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def naive_vision_adaptor(
    x: torch.Tensor,
    cu_seqlens: torch.Tensor,
    q: torch.Tensor,
    k_weight: torch.Tensor,
    v_weight: torch.Tensor,
    o_weight: torch.Tensor,
    k_bias: torch.Tensor | None = None,
    v_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attend the learnable queries over each image's projected tokens.

    Args:
        x: image embeddings of B images concatenated, [N_total, H].
        cu_seqlens: [B + 1] token offsets of the images in ``x`` (every image non-empty).
        q: learnable queries [num_q, nh, hd] with nh * hd == H.
        k_weight, v_weight, o_weight: nn.Linear weights [H, H]; k_bias, v_bias: [H] or None.

    Returns:
        [B, num_q, H] in the dtype of ``x``.
    """
    num_q, nh, hd = q.shape
    bounds = cu_seqlens.tolist()
    outs = []
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        xi = x[start:end]
        k = F.linear(xi, k_weight, k_bias).view(-1, nh, hd).transpose(0, 1)  # [nh, n, hd]
        v = F.linear(xi, v_weight, v_bias).view(-1, nh, hd).transpose(0, 1)
        scores = q.transpose(0, 1) @ k.transpose(1, 2) / math.sqrt(hd)  # [nh, num_q, n]
        wide = torch.promote_types(scores.dtype, torch.float32)
        probs = torch.softmax(scores, dim=-1, dtype=wide)
        attn = probs.to(v.dtype) @ v  # [nh, num_q, hd]
        outs.append(F.linear(attn.transpose(0, 1).reshape(num_q, nh * hd), o_weight))
    if not outs:
        return x.new_empty(0, num_q, nh * hd)
    return torch.stack(outs)
