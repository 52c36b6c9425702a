"""Triton kernels for the part of the absorbed adaptor that reads the image embeddings.

Two launches, each covering every image of the batch:

1. ``_scores_kernel``: ``s = x · wᵀ`` for all N tokens, [N, R] with R = num_q * nh (a skinny GEMM;
   the fp32 weights are split into a high and a low half so low-precision ``x`` still gets
   fp32-accurate scores, which matter because they are exponentiated).
2. ``_pool_kernel``: per image, an online softmax over its tokens' scores and the weighted sum of
   x, flash-decoding style: programs split the output columns and, for long images, the tokens;
   each writes an unnormalised partial (acc, running max, running sum) that torch merges.

Why not one launch: the softmax weights of a token need its full-row scores before that row of x
can be pooled, so a single pass would have to keep an [R, H] fp32 accumulator per program
(~1 MB at H=3584), far beyond registers and shared memory. Splitting costs a second read of x
(from L2 when it fits: 7 MB of bf16 at 7B dims and 1024 tokens) and an fp32 scores buffer of
256 B per token (vs 7 KB of x), which every column block re-reads from L2. Block sizes are
untuned (no GPU was available when this was written).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton import dot_precision, upcast_dot_operands

# Block sizes (untuned): tokens per tile (both kernels), hidden columns per step of the scores
# GEMM, output columns per pooling program.
BLOCK_N, BLOCK_K, BLOCK_H = 64, 64, 64


@triton.jit
def _scores_kernel(
    x_ptr,
    w_hi_ptr,
    w_lo_ptr,
    s_ptr,
    n_tokens,
    hidden,
    n_rows,
    stride_xn,
    stride_xh,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    R_PAD: tl.constexpr,
    SPLIT_W: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    offs_n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, R_PAD)
    n_mask = offs_n < n_tokens
    r_mask = offs_r < n_rows
    acc = tl.zeros([BLOCK_N, R_PAD], dtype=tl.float32)
    for k0 in range(0, hidden, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < hidden
        x = tl.load(
            x_ptr + offs_n[:, None] * stride_xn + offs_k[None, :] * stride_xh,
            mask=n_mask[:, None] & k_mask[None, :],
            other=0.0,
        )
        if UPCAST:
            x = x.to(tl.float32)
        w_offs = offs_r[None, :] * hidden + offs_k[:, None]
        w_mask = r_mask[None, :] & k_mask[:, None]
        w = tl.load(w_hi_ptr + w_offs, mask=w_mask, other=0.0).to(x.dtype)
        acc = tl.dot(x, w, acc, input_precision=PRECISION)
        if SPLIT_W:
            w = tl.load(w_lo_ptr + w_offs, mask=w_mask, other=0.0).to(x.dtype)
            acc = tl.dot(x, w, acc, input_precision=PRECISION)
    tl.store(s_ptr + offs_n[:, None] * R_PAD + offs_r[None, :], acc, mask=n_mask[:, None])


@triton.jit
def _pool_kernel(
    x_ptr,
    s_ptr,
    cu_ptr,
    acc_ptr,
    m_ptr,
    l_ptr,
    hidden,
    n_rows,
    stride_xn,
    stride_xh,
    tiles_per_split,
    BLOCK_N: tl.constexpr,
    BLOCK_H: tl.constexpr,
    R_PAD: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    image = tl.program_id(0)
    col_block = tl.program_id(1)
    split = tl.program_id(2)
    num_splits = tl.num_programs(2)
    start = tl.load(cu_ptr + image).to(tl.int64)
    end = tl.load(cu_ptr + image + 1).to(tl.int64)
    tile_lo = split * tiles_per_split
    tile_hi = tl.minimum(tile_lo + tiles_per_split, tl.cdiv(end - start, BLOCK_N))

    offs_r = tl.arange(0, R_PAD)
    offs_h = col_block * BLOCK_H + tl.arange(0, BLOCK_H)
    r_mask = offs_r < n_rows
    h_mask = offs_h < hidden
    m_run = tl.full([R_PAD], float("-inf"), dtype=tl.float32)
    l_run = tl.zeros([R_PAD], dtype=tl.float32)
    acc = tl.zeros([R_PAD, BLOCK_H], dtype=tl.float32)
    for tile in range(tile_lo, tile_hi):  # each holds at least one token, as _pool_tile needs
        offs_n = start + tile * BLOCK_N + tl.arange(0, BLOCK_N)
        m_run, l_run, acc = _pool_tile(
            x_ptr, s_ptr, offs_n, offs_n < end, offs_r, offs_h, h_mask, stride_xn, stride_xh,
            m_run, l_run, acc, R_PAD, PRECISION, UPCAST,
        )  # fmt: skip

    part = image * num_splits + split
    tl.store(
        acc_ptr + (part * n_rows + offs_r[:, None]) * hidden + offs_h[None, :],
        acc,
        mask=r_mask[:, None] & h_mask[None, :],
    )
    if col_block == 0:
        tl.store(m_ptr + part * n_rows + offs_r, m_run, mask=r_mask)
        tl.store(l_ptr + part * n_rows + offs_r, l_run, mask=r_mask)


@triton.jit
def _pool_tile(
    x_ptr,
    s_ptr,
    offs_n,
    n_mask,
    offs_r,
    offs_h,
    h_mask,
    stride_xn,
    stride_xh,
    m_run,
    l_run,
    acc,
    R_PAD: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """Fold the tokens ``offs_n`` (at least one of them real, so the new max is finite) into the
    online softmax (m, l) of each score row and its weighted sum ``acc`` of x's columns."""
    s = tl.load(
        s_ptr + offs_n[:, None] * R_PAD + offs_r[None, :],
        mask=n_mask[:, None],
        other=float("-inf"),
    )
    m_new = tl.maximum(m_run, tl.max(s, axis=0))
    alpha = tl.exp(m_run - m_new)
    p = tl.exp(s - m_new[None, :])
    l_run = l_run * alpha + tl.sum(p, axis=0)
    x = tl.load(
        x_ptr + offs_n[:, None] * stride_xn + offs_h[None, :] * stride_xh,
        mask=n_mask[:, None] & h_mask[None, :],
        other=0.0,
    )
    p = tl.trans(p).to(x.dtype)  # rounded like the PV product of flash attention
    if UPCAST:
        p = p.to(tl.float32)
        x = x.to(tl.float32)
    acc = acc * alpha[:, None] + tl.dot(p, x, input_precision=PRECISION)
    return m_new, l_run, acc


def pool_images_triton(
    x: torch.Tensor,
    cu_seqlens: torch.Tensor,
    w: torch.Tensor,
    *,
    max_seqlen: int | None = None,
    num_splits: int | None = None,
) -> torch.Tensor:
    """Triton version of :func:`~.absorbed.pool_images_torch`: [B, num_q, nh, H] fp32.

    ``max_seqlen`` (longest image) avoids a device sync when given. ``num_splits`` overrides the
    number of token splits per image (default: enough programs to fill the GPU twice).
    """
    num_q, nh, hidden = w.shape
    batch = cu_seqlens.numel() - 1
    if batch == 0:
        return x.new_empty(0, num_q, nh, hidden, dtype=torch.float32)
    if max_seqlen is None:
        max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    rows = w.reshape(num_q * nh, hidden)
    scores = _token_scores(x, rows)
    acc, m, denom = _pool_partials(x, scores, cu_seqlens, rows.shape, max_seqlen, num_splits)
    # Merge the splits' partial softmaxes (splits past an image's end hold m=-inf, l=0).
    scale = torch.exp(m - m.amax(dim=1, keepdim=True))
    pooled = (acc * scale[..., None]).sum(dim=1) / (denom * scale).sum(dim=1)[..., None]
    return pooled.view(batch, num_q, nh, hidden)


def _token_scores(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Scores ``x · rowsᵀ`` [N, R_PAD] fp32 of every token (R_PAD: the R rows padded for tl.dot).

    Low-precision ``x`` multiplies the fp32 rows' high and low halves in its dtype, so the scores
    stay fp32-accurate (they are exponentiated).
    """
    n_rows, hidden = rows.shape
    r_pad = max(16, triton.next_power_of_2(n_rows))
    fp32 = x.dtype == torch.float32
    rows = rows.float()
    w_hi = rows.to(x.dtype).contiguous()
    w_lo = w_hi if fp32 else (rows - w_hi.float()).to(x.dtype).contiguous()
    n_tokens = x.shape[0]
    scores = torch.empty(n_tokens, r_pad, device=x.device, dtype=torch.float32)
    _scores_kernel[(triton.cdiv(n_tokens, BLOCK_N),)](
        x,
        w_hi,
        w_lo,
        scores,
        n_tokens,
        hidden,
        n_rows,
        x.stride(0),
        x.stride(1),
        BLOCK_N=BLOCK_N,
        BLOCK_K=BLOCK_K,
        R_PAD=r_pad,
        SPLIT_W=not fp32,
        PRECISION=dot_precision(x.dtype),
        UPCAST=upcast_dot_operands(x.dtype),
    )
    return scores


def _pool_partials(
    x: torch.Tensor,
    scores: torch.Tensor,
    cu_seqlens: torch.Tensor,
    rows_shape: tuple[int, int],
    max_seqlen: int,
    num_splits: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each (image, token split)'s unnormalised pool [B, S, R, H], running max and sum [B, S, R]."""
    batch = cu_seqlens.numel() - 1
    n_rows, hidden = rows_shape
    col_blocks = triton.cdiv(hidden, BLOCK_H)
    tiles_per_split, num_splits = _token_splits(
        max_seqlen, num_splits, batch * col_blocks, x.device
    )
    acc = torch.empty(batch, num_splits, n_rows, hidden, device=x.device, dtype=torch.float32)
    m = torch.empty(batch, num_splits, n_rows, device=x.device, dtype=torch.float32)
    denom = torch.empty_like(m)
    _pool_kernel[(batch, col_blocks, num_splits)](
        x,
        scores,
        cu_seqlens,
        acc,
        m,
        denom,
        hidden,
        n_rows,
        x.stride(0),
        x.stride(1),
        tiles_per_split,
        BLOCK_N=BLOCK_N,
        BLOCK_H=BLOCK_H,
        R_PAD=scores.shape[1],
        PRECISION=dot_precision(x.dtype),
        UPCAST=upcast_dot_operands(x.dtype),
    )
    return acc, m, denom


def _token_splits(
    max_seqlen: int, num_splits: int | None, programs: int, device: torch.device
) -> tuple[int, int]:
    """(tiles per split, splits) of the longest image's token tiles: ``num_splits`` of them, by
    default enough to fill the GPU twice beside the ``programs`` (images x column blocks); every
    split gets a tile."""
    max_tiles = max(1, triton.cdiv(max_seqlen, BLOCK_N))
    if num_splits is None:
        num_splits = triton.cdiv(2 * _num_sms(device), programs)
    tiles_per_split = triton.cdiv(max_tiles, min(max(1, num_splits), max_tiles))
    return tiles_per_split, triton.cdiv(max_tiles, tiles_per_split)


def _num_sms(device: torch.device) -> int:
    """Streaming multiprocessors to fill; 1 off-GPU (Triton's CPU interpreter)."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count
