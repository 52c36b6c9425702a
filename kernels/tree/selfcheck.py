"""Random tree-attention cases, and a start-up check of the Triton kernel against PyTorch.

As for the draft attention (:mod:`..attention.selfcheck`), the kernel has only run under Triton's
interpreter in CI; :func:`check_triton_tree_attention` runs it for one head layout, block size and
dtype on the device, so a compile error or a wrong result shows up before the first verification.
The same cases drive the kernel tests.
"""

from __future__ import annotations

import torch

from ..attention.selfcheck import (
    CHECK_TOLERANCE,
    _cu,
    poisoned_cache,
    relative_error,
    visible_slots,
)
from .masks import ancestor_masks
from .naive import naive_tree_paged_attention

GAP = 3  # unwritten (NaN) slots scattered among each request's node positions

# Contexts with unseen spans (whole pages, page parts, single positions, the very start, the
# whole context), an empty and a 300-position context, trees of 1..64 nodes (bit 63 used).
TREE_BATCH = {
    "context_lens": [40, 77, 5, 0, 130, 300],
    "unseen": [
        [(3, 20)],
        [(0, 2), (16, 48), (50, 51), (72, 77)],
        [(0, 5)],
        [],
        [],
        [(10, 150), (160, 200), (200, 201), (230, 299)],
    ],
    "num_nodes": [7, 64, 3, 5, 12, 30],
}


def random_parents(num_nodes: int, seed: int) -> list[int]:
    """Topologically ordered tree: each node's parent is one of the 4 nodes before it, or -1
    (a child of the context), so paths get deep and roots several."""
    gen = torch.Generator().manual_seed(seed)
    return [max(-1, j - 1 - int(torch.randint(4, (1,), generator=gen))) for j in range(num_nodes)]


def tree_case(
    context_lens: list[int],
    num_nodes: list[int],
    row_masks: list[list[int]],
    unseen: list[list[tuple[int, int]]],
    *,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict:
    """Keyword arguments of :func:`~vllm_vispec.kernels.tree_paged_attention` over a shuffled,
    NaN-poisoned cache.

    Nodes sit after their context in shuffled order with unwritten slots between them; unseen
    and unwritten slots hold NaN, pages without a written slot all map to one NaN block, and
    node_pos entries past a request's node count are garbage: reading any of them gives NaN or
    an out-of-bounds index.
    """
    gen = torch.Generator().manual_seed(seed)
    batch = len(context_lens)
    width = max(num_nodes, default=0)
    node_pos = torch.randint(-(10**6), 10**6, (batch, width), generator=gen)
    ends = []
    for b, (context, n) in enumerate(zip(context_lens, num_nodes, strict=True)):
        node_pos[b, :n] = context + torch.randperm(n + GAP, generator=gen)[:n]
        ends.append(context + n + GAP)
    max_blocks = max(-(-e // block_size) for e in ends) + 1
    written = visible_slots(context_lens, unseen, max_blocks * block_size)
    for b, n in enumerate(num_nodes):
        written[b, node_pos[b, :n]] = True
    k_cache, v_cache, table = poisoned_cache(
        written, block_size, num_kv_heads, head_dim, dtype, gen
    )
    case = {
        "q": torch.randn(sum(map(len, row_masks)), num_heads, head_dim, generator=gen).to(dtype),
        "k_cache": k_cache,
        "v_cache": v_cache,
        "query_start_loc": _cu([len(m) for m in row_masks]),
        "block_table": table.to(torch.int32),
        "context_lens": torch.tensor(context_lens, dtype=torch.int32),
        "node_pos": node_pos.to(torch.int32),
        "row_masks": torch.tensor([m for ms in row_masks for m in ms], dtype=torch.int64),
        "unseen_start": torch.tensor([s for h in unseen for s, _ in h], dtype=torch.int32),
        "unseen_end": torch.tensor([e for h in unseen for _, e in h], dtype=torch.int32),
        "cu_unseen": _cu([len(h) for h in unseen]),
        "scale": head_dim**-0.5,
    }
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in case.items()}


def tree_batch(
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
) -> tuple[dict, list[list[int]]]:
    """:data:`TREE_BATCH` with one row per node (its ancestor mask); also returns the parents."""
    parents = [random_parents(n, seed=b) for b, n in enumerate(TREE_BATCH["num_nodes"])]
    case = tree_case(
        TREE_BATCH["context_lens"],
        TREE_BATCH["num_nodes"],
        [ancestor_masks(torch.tensor([p]))[0].tolist() for p in parents],
        TREE_BATCH["unseen"],
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        block_size=block_size,
        dtype=dtype,
        device=device,
    )
    return case, parents


def reference_tree_attention(case: dict) -> torch.Tensor:
    """The PyTorch path on float64 CPU copies of a case."""
    wide = {
        k: (v.double() if v.is_floating_point() else v).cpu() if torch.is_tensor(v) else v
        for k, v in case.items()
    }
    return naive_tree_paged_attention(**wide)


def check_triton_tree_attention(
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device | str,
) -> str | None:
    """None if the Triton kernel runs on :data:`TREE_BATCH` and matches the float64 reference
    within :data:`CHECK_TOLERANCE` of the dtype; otherwise what went wrong, in one line."""
    case, _ = tree_batch(num_heads, num_kv_heads, head_dim, block_size, dtype, device)
    try:
        from .paged import tree_paged_attention_triton

        max_query_len = max(TREE_BATCH["num_nodes"])
        # .cpu() inside: an asynchronous launch error surfaces here, not in the comparison.
        out = tree_paged_attention_triton(**case, max_query_len=max_query_len).cpu()
    except Exception as e:  # no Triton, compile or launch failure: the check's outcome
        first_line = str(e).strip().partition("\n")[0]
        return f"the Triton tree attention failed to run: {type(e).__name__}: {first_line}"
    err = relative_error(out, reference_tree_attention(case))
    allowed = CHECK_TOLERANCE[dtype]
    if err <= allowed:  # False for NaN
        return None
    return (
        f"the Triton tree attention differs from its PyTorch reference by {err:.3g} "
        f"(allowed {allowed:g}) for heads {num_heads}/{num_kv_heads}, head_dim {head_dim}, "
        f"block size {block_size}, {dtype}"
    )
