"""Triton KV slot compaction: gather every source slot into a buffer, then scatter it.

A source slot may be another pair's destination (accepted tree nodes slide down onto the slots
of rejected ones), so all reads must precede any write. GPU programs of one launch run in no
particular order, hence two launches of one copy kernel on the same stream: cache -> buffer,
then buffer -> cache. The stream orders them, so the second launch reads only the buffer.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _copy_row(
    in_ptr,
    out_ptr,
    in_block,
    in_off,
    out_block,
    out_off,
    head,
    dims,
    d_mask,
    in_sb,
    in_ss,
    in_sh,
    in_sd,
    out_sb,
    out_ss,
    out_sh,
    out_sd,
):
    """Copy one head's row between two [blocks, block_size, nkv, hd] strided layouts."""
    row = tl.load(
        in_ptr + in_block * in_sb + in_off * in_ss + head * in_sh + dims * in_sd, mask=d_mask
    )
    tl.store(
        out_ptr + out_block * out_sb + out_off * out_ss + head * out_sh + dims * out_sd,
        row,
        mask=d_mask,
    )


@triton.jit
def _copy_slots_kernel(
    k_in_ptr,
    v_in_ptr,
    k_out_ptr,
    v_out_ptr,
    in_slots_ptr,
    out_slots_ptr,
    in_page,
    out_page,
    head_dim,
    k_in_sb,
    k_in_ss,
    k_in_sh,
    k_in_sd,
    v_in_sb,
    v_in_ss,
    v_in_sh,
    v_in_sd,
    k_out_sb,
    k_out_ss,
    k_out_sh,
    k_out_sd,
    v_out_sb,
    v_out_ss,
    v_out_sh,
    v_out_sd,
    HD_PAD: tl.constexpr,
):
    pair = tl.program_id(0)
    head = tl.program_id(1).to(tl.int64)
    src = tl.load(in_slots_ptr + pair).to(tl.int64)
    dst = tl.load(out_slots_ptr + pair).to(tl.int64)
    in_block, in_off = src // in_page, src % in_page
    out_block, out_off = dst // out_page, dst % out_page
    dims = tl.arange(0, HD_PAD)
    d_mask = dims < head_dim
    _copy_row(
        k_in_ptr, k_out_ptr, in_block, in_off, out_block, out_off, head, dims, d_mask,
        k_in_sb, k_in_ss, k_in_sh, k_in_sd, k_out_sb, k_out_ss, k_out_sh, k_out_sd,
    )  # fmt: skip
    _copy_row(
        v_in_ptr, v_out_ptr, in_block, in_off, out_block, out_off, head, dims, d_mask,
        v_in_sb, v_in_ss, v_in_sh, v_in_sd, v_out_sb, v_out_ss, v_out_sh, v_out_sd,
    )  # fmt: skip


def _copy_slots(
    k_in: torch.Tensor,
    v_in: torch.Tensor,
    k_out: torch.Tensor,
    v_out: torch.Tensor,
    in_slots: torch.Tensor,
    out_slots: torch.Tensor,
) -> None:
    """K/V at slot in_slots[i] of (k_in, v_in) -> slot out_slots[i] of (k_out, v_out)."""
    num_kv_heads, head_dim = k_in.shape[2:]
    _copy_slots_kernel[(in_slots.numel(), num_kv_heads)](
        k_in,
        v_in,
        k_out,
        v_out,
        in_slots,
        out_slots,
        k_in.shape[1],
        k_out.shape[1],
        head_dim,
        *k_in.stride(),
        *v_in.stride(),
        *k_out.stride(),
        *v_out.stride(),
        HD_PAD=triton.next_power_of_2(head_dim),
    )


def compact_kv_triton(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    src_slots: torch.Tensor,
    dst_slots: torch.Tensor,
) -> None:
    """Triton version of :func:`~.naive.naive_compact_kv` (same arguments)."""
    num = src_slots.numel()
    if num == 0:
        return
    src_slots, dst_slots = src_slots.contiguous(), dst_slots.contiguous()
    _, _, num_kv_heads, head_dim = k_cache.shape
    # The buffer as a cache of one-slot blocks: slot i is block i.
    k_buf = k_cache.new_empty(num, 1, num_kv_heads, head_dim)
    v_buf = v_cache.new_empty(num, 1, num_kv_heads, head_dim)
    index = torch.arange(num, device=src_slots.device)
    _copy_slots(k_cache, v_cache, k_buf, v_buf, src_slots, index)
    _copy_slots(k_buf, v_buf, k_cache, v_cache, index, dst_slots)
