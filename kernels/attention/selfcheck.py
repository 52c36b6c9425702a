"""Random paged-attention cases, and a start-up check of the Triton kernel against PyTorch.

The kernel has only been run under Triton's interpreter in CI. A draft that picks it on a GPU
first runs :func:`check_triton_attention` for its own head layout, block size and dtype: a
compile error or a wrong result shows up at start-up, not in the first request. The same cases
drive the kernel tests.
"""

from __future__ import annotations

import itertools

import torch

from .naive import naive_draft_paged_attention

# Max error relative to max(1, |reference|) (the GPU's exp2 is approximate, hence above the
# interpreter tests' bounds).
CHECK_TOLERANCE = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2}

# Decode rows and prefill chunks; unseen intervals covering whole pages, parts of pages, single
# positions, the very start, and everything before some queries (their output is 0).
CHECK_BATCH = {
    "q_lens": [1, 7, 40, 1, 5],
    "seq_lens": [30, 77, 100, 300, 5],
    "unseen": [
        [(3, 20)],
        [(0, 2), (16, 48), (50, 51), (72, 74)],
        [],
        [(10, 150), (160, 200), (200, 201), (230, 299)],
        [(0, 3)],
    ],
}


def _cu(lens: list[int]) -> torch.Tensor:
    return torch.tensor([0, *itertools.accumulate(lens)], dtype=torch.int32)


def paged_case(
    q_lens: list[int],
    seq_lens: list[int],
    unseen: list[list[tuple[int, int]]],
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict:
    """Keyword arguments of :func:`~vllm_vispec.kernels.draft_paged_attention` for a batch over
    a shuffled paged cache.

    Unseen and unused slots hold NaN, and logical blocks without a visible position all point to
    one NaN-filled physical block: a kernel that reads a unseen value returns NaN.
    """
    gen = torch.Generator().manual_seed(seed)
    max_blocks = max(-(-s // block_size) for s in seq_lens) + 1
    visible = visible_slots(seq_lens, unseen, max_blocks * block_size)
    k_cache, v_cache, table = poisoned_cache(
        visible, block_size, num_kv_heads, head_dim, dtype, gen
    )
    case = {
        "q": torch.randn(sum(q_lens), num_heads, head_dim, generator=gen).to(dtype),
        "k_cache": k_cache,
        "v_cache": v_cache,
        "query_start_loc": _cu(q_lens),
        "seq_lens": torch.tensor(seq_lens, dtype=torch.int32),
        "block_table": table.to(torch.int32),
        "unseen_start": torch.tensor([s for h in unseen for s, _ in h], dtype=torch.int32),
        "unseen_end": torch.tensor([e for h in unseen for _, e in h], dtype=torch.int32),
        "cu_unseen": _cu([len(h) for h in unseen]),
        "scale": head_dim**-0.5,
    }
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in case.items()}


def visible_slots(lens: list[int], unseen: list[list[tuple[int, int]]], width: int) -> torch.Tensor:
    """[B, width] bool: request b's positions below lens[b] outside its unseen intervals."""
    visible = torch.zeros(len(lens), width, dtype=torch.bool)
    for b, length in enumerate(lens):
        visible[b, :length] = True
        for start, end in unseen[b]:
            visible[b, start:end] = False
    return visible


def poisoned_cache(
    written: torch.Tensor,
    block_size: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """K/V caches and an int64 block table [B, max_blocks] in which request b's ``written[b]``
    slots ([B, max_blocks * block_size] bool) hold random values and every other slot NaN.

    Physical blocks are shuffled, and logical blocks without a written slot all point to one
    NaN-filled block: a kernel that reads an unwritten slot returns NaN.
    """
    batch, max_blocks = written.shape[0], written.shape[1] // block_size
    num_blocks = batch * max_blocks + 2
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.full(shape, float("nan"), dtype=dtype)
    v_cache = torch.full(shape, float("nan"), dtype=dtype)
    order = torch.randperm(num_blocks, generator=gen)
    poison = order[-1]  # never holds a written value
    table = order[: batch * max_blocks].view(batch, max_blocks).clone()
    for b in range(batch):
        pos = written[b].nonzero().squeeze(1)
        for cache in (k_cache, v_cache):
            values = torch.randn(len(pos), num_kv_heads, head_dim, generator=gen)
            cache[table[b, pos // block_size], pos % block_size] = values.to(dtype)
        table[b, ~written[b].view(max_blocks, block_size).any(dim=1)] = poison
    return k_cache, v_cache, table


def reference_attention(case: dict) -> torch.Tensor:
    """The PyTorch path on float64 CPU copies of a case."""
    wide = {
        k: (v.double() if v.is_floating_point() else v).cpu() if torch.is_tensor(v) else v
        for k, v in case.items()
    }
    return naive_draft_paged_attention(**wide)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Max abs error over max(1, |ref|_inf); NaN gives NaN (which no bound accepts)."""
    if not ref.numel():
        return 0.0
    err = (out.double().cpu() - ref).abs().max().item()
    return err / max(1.0, ref.abs().max().item())


def check_triton_attention(
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device | str,
    tolerance: float | None = None,
) -> None:
    """Run the Triton kernel on :data:`CHECK_BATCH`; raise RuntimeError if it fails or is off
    by more than ``tolerance`` (default :data:`CHECK_TOLERANCE` of the dtype)."""
    from .paged import draft_paged_attention_triton

    case = paged_case(
        **CHECK_BATCH,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        block_size=block_size,
        dtype=dtype,
        device=device,
    )
    try:
        out = draft_paged_attention_triton(**case)
    except Exception as e:  # compile or launch failure: report it as the check's outcome
        raise RuntimeError(f"the Triton draft attention failed to run: {e}") from e
    err = relative_error(out, reference_attention(case))
    allowed = CHECK_TOLERANCE[dtype] if tolerance is None else tolerance
    if not err <= allowed:
        raise RuntimeError(
            f"the Triton draft attention differs from its PyTorch reference by {err:.3g} "
            f"(allowed {allowed:g}) for heads {num_heads}/{num_kv_heads}, "
            f"head_dim {head_dim}, block size {block_size}, {dtype}"
        )
