"""Tree attention and KV compaction: the PyTorch references against independent oracles.

Tree attention is checked two ways: against a dense masked softmax over un-paged positions, and
against plain causal attention on each root-to-leaf path laid out as a chain. The Triton kernels
run in test_tree_kernels_triton.py under TRITON_INTERPRET=1 (a subprocess, see interpreted.py);
the case builders below are shared with it.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from interpreted import run_interpreted
from vllm_vispec.kernels import compact_kv, split_kv_cache, tree_paged_attention
from vllm_vispec.kernels.attention import naive_draft_paged_attention

GAP = 3  # unwritten (NaN) slots scattered among each request's node positions


def cu_from_lens(lens: list[int]) -> torch.Tensor:
    return torch.tensor([0, *itertools.accumulate(lens)], dtype=torch.int32)


def random_parents(num_nodes: int, seed: int) -> list[int]:
    """Topologically ordered tree: each node's parent is one of the 4 nodes before it, or -1
    (a child of the context), so paths get deep and roots several."""
    gen = torch.Generator().manual_seed(seed)
    return [max(-1, j - 1 - int(torch.randint(4, (1,), generator=gen))) for j in range(num_nodes)]


def ancestor_masks(parents: list[int]) -> list[int]:
    """Each node's row mask: its own bit and its ancestors', as signed int64 values."""
    masks: list[int] = []
    for j, parent in enumerate(parents):
        masks.append((1 << j) | (masks[parent] if parent >= 0 else 0))
    return [m - (1 << 64) if m >= 1 << 63 else m for m in masks]


def tree_case(
    context_lens: list[int],
    num_nodes: list[int],
    row_masks: list[list[int]],
    hidden: list[list[tuple[int, int]]],
    *,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
    seed: int = 0,
) -> dict:
    """Keyword arguments of :func:`tree_paged_attention` over a shuffled, NaN-poisoned cache.

    Nodes sit after their context in shuffled order with unwritten slots between them; hidden
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
    num_blocks = batch * max_blocks + 2
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.full(shape, float("nan"), dtype=dtype)
    v_cache = torch.full(shape, float("nan"), dtype=dtype)
    order = torch.randperm(num_blocks, generator=gen)
    poison = order[-1]  # never holds a written value
    table = order[: batch * max_blocks].view(batch, max_blocks).clone()
    for b, context in enumerate(context_lens):
        written = torch.zeros(max_blocks * block_size, dtype=torch.bool)
        written[:context] = True
        for start, end in hidden[b]:
            written[start:end] = False
        written[node_pos[b, : num_nodes[b]]] = True
        pos = written.nonzero().squeeze(1)
        for cache in (k_cache, v_cache):
            values = torch.randn(len(pos), num_kv_heads, head_dim, generator=gen)
            cache[table[b, pos // block_size], pos % block_size] = values.to(dtype)
        table[b, ~written.view(max_blocks, block_size).any(dim=1)] = poison
    return {
        "q": torch.randn(sum(map(len, row_masks)), num_heads, head_dim, generator=gen).to(dtype),
        "k_cache": k_cache,
        "v_cache": v_cache,
        "query_start_loc": cu_from_lens([len(m) for m in row_masks]),
        "block_table": table.to(torch.int32),
        "context_lens": torch.tensor(context_lens, dtype=torch.int32),
        "node_pos": node_pos.to(torch.int32),
        "row_masks": torch.tensor([m for ms in row_masks for m in ms], dtype=torch.int64),
        "hidden_start": torch.tensor([s for h in hidden for s, _ in h], dtype=torch.int32),
        "hidden_end": torch.tensor([e for h in hidden for _, e in h], dtype=torch.int32),
        "cu_hidden": cu_from_lens([len(h) for h in hidden]),
        "scale": head_dim**-0.5,
    }


# Contexts with hidden spans (whole pages, page parts, the very start, the whole context), trees
# of 1..64 nodes (bit 63 used) and an empty context.
TREE_BATCH = {
    "context_lens": [40, 77, 5, 0, 130],
    "hidden": [[(3, 20)], [(0, 2), (16, 48), (50, 51), (72, 77)], [(0, 5)], [], []],
    "num_nodes": [7, 64, 3, 5, 12],
}


def tree_batch(
    num_heads: int, num_kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype
) -> tuple[dict, list[list[int]]]:
    """:data:`TREE_BATCH` with one row per node (its ancestor mask); also returns the parents."""
    parents = [random_parents(n, seed=b) for b, n in enumerate(TREE_BATCH["num_nodes"])]
    case = tree_case(
        TREE_BATCH["context_lens"],
        TREE_BATCH["num_nodes"],
        [ancestor_masks(p) for p in parents],
        TREE_BATCH["hidden"],
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        block_size=block_size,
        dtype=dtype,
    )
    return case, parents


def reference(case: dict) -> torch.Tensor:
    """The PyTorch path on float64 copies of a case."""
    wide = {
        k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v
        for k, v in case.items()
    }
    return tree_paged_attention(**wide, use_triton=False)


def dense_oracle(case: dict, num_nodes: list[int]) -> torch.Tensor:
    """Independent oracle: un-page context and nodes position by position, one dense mask."""
    q, k_cache, v_cache = case["q"].double(), case["k_cache"].double(), case["v_cache"].double()
    block_size, num_kv_heads = k_cache.shape[1:3]
    group = q.shape[1] // num_kv_heads
    starts, cu = case["query_start_loc"].tolist(), case["cu_hidden"].tolist()
    out = torch.zeros_like(q)
    for b, context in enumerate(case["context_lens"].tolist()):
        positions = list(range(context)) + case["node_pos"][b, : num_nodes[b]].tolist()
        table = case["block_table"][b].tolist()
        k = torch.stack([k_cache[table[p // block_size], p % block_size] for p in positions])
        v = torch.stack([v_cache[table[p // block_size], p % block_size] for p in positions])
        hidden = torch.zeros(context, dtype=torch.bool)
        for i in range(cu[b], cu[b + 1]):
            hidden[case["hidden_start"][i] : case["hidden_end"][i]] = True
        for r in range(starts[b], starts[b + 1]):
            bits = int(case["row_masks"][r]) & ((1 << 64) - 1)
            nodes = torch.tensor([(bits >> j) & 1 == 1 for j in range(num_nodes[b])])
            mask = torch.cat([~hidden, nodes.bool()])
            if not mask.any():
                continue
            for h in range(q.shape[1]):
                scores = (k[mask, h // group] @ q[r, h]) * case["scale"]
                out[r, h] = torch.softmax(scores, dim=0) @ v[mask, h // group]
    return out


def check_paths(case: dict, parents: list[list[int]], out: torch.Tensor, tol: float) -> None:
    """Each root-to-leaf path, laid out as a chain after the context, under causal attention
    (:func:`naive_draft_paged_attention` in float64) gives the tree output of its nodes."""
    k_cache, v_cache = case["k_cache"].double(), case["v_cache"].double()
    block_size = k_cache.shape[1]
    starts, cu = case["query_start_loc"].tolist(), case["cu_hidden"]
    for b, tree in enumerate(parents):
        table = case["block_table"][b].long()
        hidden = slice(int(cu[b]), int(cu[b + 1]))
        for leaf in set(range(len(tree))) - set(tree):
            path = [leaf]
            while tree[path[-1]] >= 0:
                path.append(tree[path[-1]])
            path.reverse()
            pos = torch.cat([torch.arange(int(case["context_lens"][b])), case["node_pos"][b, path]])
            seq_len = len(pos)
            pad = -seq_len % block_size
            chain = [
                torch.cat(
                    [c[table[pos // block_size], pos % block_size], c.new_zeros(pad, *c.shape[2:])]
                ).unflatten(0, (-1, block_size))
                for c in (k_cache, v_cache)
            ]  # [blocks, block_size, nkv, hd], laid out contiguously
            rows = torch.tensor(path) + starts[b]
            causal = naive_draft_paged_attention(
                case["q"][rows].double(),
                *chain,
                torch.tensor([0, len(path)]),
                torch.tensor([seq_len]),
                torch.arange(len(chain[0]))[None],
                case["hidden_start"][hidden],
                case["hidden_end"][hidden],
                torch.tensor([0, hidden.stop - hidden.start]),
                case["scale"],
            )
            err = (out[rows].double() - causal).abs().max().item()
            assert err <= tol * max(1.0, causal.abs().max().item()), (b, path, err)


def vec_layout(k_cache: torch.Tensor, v_cache: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The same K/V inside vLLM's CPU ``vec`` cache (K transposed per block and head), as the
    packed tensor and its strided views."""
    num_blocks, block_size, num_kv_heads, head_dim = k_cache.shape
    kv = torch.zeros(num_blocks, num_kv_heads, block_size, 2 * head_dim, dtype=k_cache.dtype)
    k, v = split_kv_cache(kv, cpu_isa="vec")
    k.copy_(k_cache)
    v.copy_(v_cache)
    return kv, k, v


# ----------------------------------------------------------------------- tree attention


@pytest.mark.parametrize(
    ("num_heads", "num_kv_heads", "block_size"), [(4, 4, 16), (8, 2, 32), (6, 2, 16)]
)
def test_reference_matches_dense_oracle(num_heads: int, num_kv_heads: int, block_size: int) -> None:
    """Random row masks (any node subset, empty included, more rows than nodes)."""
    gen = torch.Generator().manual_seed(1)
    nodes = TREE_BATCH["num_nodes"]
    masks = [torch.randint(-(2**63), 2**63 - 1, (n + 2,), generator=gen) for n in nodes]
    masks = [
        (m & ((1 << n) - 1 if n < 64 else -1)).tolist() for m, n in zip(masks, nodes, strict=True)
    ]
    masks[0][0] = masks[2][0] = 0  # context only; request 2 then sees nothing at all
    case = tree_case(
        TREE_BATCH["context_lens"],
        nodes,
        masks,
        TREE_BATCH["hidden"],
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=32,
        block_size=block_size,
        dtype=torch.float64,
    )
    out = tree_paged_attention(**case)
    assert not out.isnan().any()
    torch.testing.assert_close(out, dense_oracle(case, nodes))
    assert out[case["query_start_loc"][2]].abs().max() == 0


@pytest.mark.parametrize(
    ("num_heads", "num_kv_heads", "block_size"), [(4, 4, 16), (8, 2, 32), (6, 2, 16)]
)
def test_reference_matches_causal_paths(num_heads: int, num_kv_heads: int, block_size: int) -> None:
    case, parents = tree_batch(num_heads, num_kv_heads, 32, block_size, torch.float64)
    assert min(case["row_masks"]) < 0  # the 64-node tree's last node sets bit 63
    check_paths(case, parents, tree_paged_attention(**case), tol=1e-12)


def test_reference_on_cpu_vec_layout() -> None:
    case, parents = tree_batch(8, 2, 32, 16, torch.float32)
    want = reference(case)
    _, case["k_cache"], case["v_cache"] = vec_layout(case["k_cache"], case["v_cache"])
    out = tree_paged_attention(**case)
    torch.testing.assert_close(out, want.float())
    check_paths(case, parents, out, tol=1e-5)


def test_reference_without_nodes() -> None:
    """node_pos [B, 0]: every row sees just its visible context."""
    case = tree_case(
        [30, 9], [0, 0], [[0, 0], [0]], [[(4, 9)], []],
        num_heads=4, num_kv_heads=2, head_dim=16, block_size=16, dtype=torch.float64,
    )  # fmt: skip
    out = tree_paged_attention(**case)
    torch.testing.assert_close(out, dense_oracle(case, [0, 0]))


def test_too_many_nodes() -> None:
    case = tree_case(
        [4], [65], [[0]], [[]],
        num_heads=2, num_kv_heads=2, head_dim=16, block_size=16, dtype=torch.float32,
    )  # fmt: skip
    with pytest.raises(ValueError, match="at most 64 nodes"):
        tree_paged_attention(**case)


# ------------------------------------------------------------------------------ compact_kv

# Over 4-slot blocks: a swap (2 <-> 9), a chain 5 -> 6 -> 7 (6 read, then written), a no-op
# (13 -> 13) and a move across blocks (3 -> 12).
SRC = [2, 9, 5, 6, 13, 3]
DST = [9, 2, 6, 7, 13, 12]


def compacted(cache: torch.Tensor, src: list[int], dst: list[int]) -> torch.Tensor:
    """Expected cache after the moves: each destination takes its source's old value."""
    block_size = cache.shape[1]
    out = cache.clone()
    for s, d in zip(src, dst, strict=True):
        out[d // block_size, d % block_size] = cache[s // block_size, s % block_size]
    return out


def kv_pair(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen).to(dtype) for _ in range(2)]


def test_compact_kv_reads_before_writes() -> None:
    k, v = kv_pair((5, 4, 2, 16), torch.float32)
    want = [compacted(c, SRC, DST) for c in (k, v)]
    compact_kv(k, v, torch.tensor(SRC), torch.tensor(DST, dtype=torch.int32))
    torch.testing.assert_close(k, want[0], rtol=0, atol=0)
    torch.testing.assert_close(v, want[1], rtol=0, atol=0)


def test_compact_kv_through_cpu_vec_views() -> None:
    """The copies land in vLLM's packed CPU cache, not in a temporary."""
    kv, k, v = vec_layout(*kv_pair((5, 4, 2, 16), torch.bfloat16))
    want = [compacted(c, SRC, DST) for c in (k, v)]
    compact_kv(k, v, torch.tensor(SRC), torch.tensor(DST))
    k_now, v_now = split_kv_cache(kv, cpu_isa="vec")
    torch.testing.assert_close(k_now, want[0], rtol=0, atol=0)
    torch.testing.assert_close(v_now, want[1], rtol=0, atol=0)


def test_compact_kv_no_pairs() -> None:
    k, v = kv_pair((2, 4, 1, 16), torch.float32)
    before = k.clone(), v.clone()
    empty = torch.zeros(0, dtype=torch.int64)
    compact_kv(k, v, empty, empty)
    assert torch.equal(k, before[0]) and torch.equal(v, before[1])


# ------------------------------------------------------------------------------- Triton


def test_triton_tree_kernels_interpreted() -> None:
    """Run test_tree_kernels_triton.py under TRITON_INTERPRET=1 in a fresh interpreter."""
    pytest.importorskip("triton")
    run_interpreted("test_tree_kernels_triton.py", "--noconftest")
