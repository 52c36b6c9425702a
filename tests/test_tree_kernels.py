"""Tree attention and KV compaction: the PyTorch references against independent oracles.

Tree attention is checked two ways: against a dense masked softmax over un-paged positions, and
against plain causal attention on each root-to-leaf path laid out as a chain. The Triton kernels
run in test_tree_kernels_triton.py under TRITON_INTERPRET=1 (a subprocess, see test_interpreted.py);
the cases come from :mod:`vllm_vispec.kernels.tree.selfcheck` (the kernel's start-up check), the
oracles below are shared with it.
"""

from __future__ import annotations

import pytest
import torch
from vllm_vispec.kernels import compact_kv, split_kv_cache, tree_paged_attention
from vllm_vispec.kernels.attention import naive_draft_paged_attention
from vllm_vispec.kernels.tree import VerifyAttention, ancestor_masks, naive_tree_paged_attention
from vllm_vispec.kernels.tree.selfcheck import (
    TREE_BATCH,
    reference_tree_attention,
    tree_batch,
    tree_case,
)


def dense_oracle(case: dict, num_nodes: list[int]) -> torch.Tensor:
    """Independent oracle: un-page context and nodes position by position, one dense mask."""
    q, k_cache, v_cache = case["q"].double(), case["k_cache"].double(), case["v_cache"].double()
    block_size, num_kv_heads = k_cache.shape[1:3]
    group = q.shape[1] // num_kv_heads
    starts, cu = case["query_start_loc"].tolist(), case["cu_unseen"].tolist()
    out = torch.zeros_like(q)
    for b, context in enumerate(case["context_lens"].tolist()):
        positions = list(range(context)) + case["node_pos"][b, : num_nodes[b]].tolist()
        table = case["block_table"][b].tolist()
        k = torch.stack([k_cache[table[p // block_size], p % block_size] for p in positions])
        v = torch.stack([v_cache[table[p // block_size], p % block_size] for p in positions])
        hidden = torch.zeros(context, dtype=torch.bool)
        for i in range(cu[b], cu[b + 1]):
            hidden[case["unseen_start"][i] : case["unseen_end"][i]] = True
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
    starts, cu = case["query_start_loc"].tolist(), case["cu_unseen"]
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
                case["unseen_start"][hidden],
                case["unseen_end"][hidden],
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
        TREE_BATCH["unseen"],
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
    want = reference_tree_attention(case)
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


def test_verify_attention_equals_the_reference() -> None:
    """The target's per-step tree attention (CPU: one masked SDPA per layer) against the
    reference, on two trees whose nodes follow their context, over a shuffled paged cache with
    GQA and rows of other requests around them."""
    gen = torch.Generator().manual_seed(0)
    parents = [[-1] + [int(torch.randint(0, i, (), generator=gen)) for i in range(1, n)]
               for n in (9, 5)]  # fmt: skip
    width = max(map(len, parents))
    padded = torch.tensor([p + [-1] * (width - len(p)) for p in parents])
    masks, num_nodes = ancestor_masks(padded), torch.tensor([len(p) for p in parents])
    bases, starts = torch.tensor([37, 3]), torch.tensor([5, 5 + 9 + 2])
    bs, nkv, nh, hd = 16, 2, 4, 8
    k_cache, v_cache = (torch.randn(12, bs, nkv, hd, generator=gen) for _ in range(2))
    table = torch.randperm(12, generator=gen)[:8].view(2, 4)
    full = torch.cat([torch.zeros(1, 4, dtype=torch.long), table])  # batch row 0: no tree
    attention = VerifyAttention(torch.tensor([1, 2]), starts, bases, masks, num_nodes)
    query = torch.randn(int(starts[1]) + 6, nh, hd, generator=gen)
    got = attention(query, k_cache, v_cache, full, 0.3)
    empty = torch.zeros(0, dtype=torch.long)
    want = naive_tree_paged_attention(
        query[attention.rows], k_cache, v_cache, attention.query_start_loc, table, bases,
        bases[:, None] + torch.arange(width), masks[attention.tree_of, attention.node_of],
        empty, empty, torch.zeros(3, dtype=torch.long), 0.3,
    )  # fmt: skip
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert attention.rows.tolist() == [*range(5, 14), *range(16, 21)]


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
