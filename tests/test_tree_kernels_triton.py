"""Tree attention and KV compaction Triton kernels on CPU via Triton's interpreter.

Needs TRITON_INTERPRET=1 before Triton is first imported, so a full test run skips this module
and test_interpreted.py runs it in a subprocess. Run it
alone with ``TRITON_INTERPRET=1 python -m pytest tests/test_tree_kernels_triton.py``.
"""

from __future__ import annotations

import os

import pytest

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 (run by test_interpreted.py)", allow_module_level=True)

import torch
from test_kernels import DTYPES, TOLERANCE, assert_close
from test_tree_kernels import DST, SRC, check_paths, compacted, kv_pair, vec_layout
from vllm_vispec.kernels import compact_kv, split_kv_cache, tree_paged_attention
from vllm_vispec.kernels.tree import ancestor_masks
from vllm_vispec.kernels.tree.selfcheck import (
    check_triton_tree_attention,
    reference_tree_attention,
    tree_batch,
    tree_case,
)

# ----------------------------------------------------------------------- tree attention


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("num_heads", "num_kv_heads", "head_dim", "block_size"),
    [(4, 4, 32, 16), (8, 2, 64, 32), (6, 2, 80, 16)],
)
def test_tree_triton_matches_reference(
    dtype: torch.dtype, num_heads: int, num_kv_heads: int, head_dim: int, block_size: int
) -> None:
    """Hidden spans, GQA (groups of 1, 3 padded to 4, 4), head dim 80 padded to 128, and a
    64-node tree whose rows span one or two query blocks."""
    case, _ = tree_batch(num_heads, num_kv_heads, head_dim, block_size, dtype)
    out = tree_paged_attention(**case, use_triton=True)
    assert out.dtype == dtype
    assert_close(out, reference_tree_attention(case), dtype)


def test_tree_triton_matches_causal_paths() -> None:
    case, parents = tree_batch(8, 2, 32, 16, torch.float32)
    out = tree_paged_attention(**case, use_triton=True, max_query_len=64)
    check_paths(case, parents, out, tol=TOLERANCE[torch.float32])


def test_tree_triton_random_masks_many_rows() -> None:
    """Rows need not be nodes: 150 rows (3 query blocks) with random node subsets."""
    gen = torch.Generator().manual_seed(2)
    masks = torch.randint(-(2**63), 2**63 - 1, (150,), generator=gen)
    masks[:3] = torch.tensor([0, -1, -(2**63)])  # context only, all nodes, bit 63 alone
    case = tree_case(
        [50], [64], [masks.tolist()], [[(10, 40)]],
        num_heads=2, num_kv_heads=1, head_dim=16, block_size=16, dtype=torch.float32,
    )  # fmt: skip
    out = tree_paged_attention(**case, use_triton=True)
    assert_close(out, reference_tree_attention(case), torch.float32)


@pytest.mark.parametrize("isa", ["gpu", "vec"])
def test_tree_triton_on_vllm_cache_views(isa: str) -> None:
    """K/V as strided views into vLLM 0.32's packed GPU-layout or CPU ``vec`` cache."""
    case, _ = tree_batch(4, 2, 32, 16, torch.float16)
    want = reference_tree_attention(case)
    if isa == "gpu":
        packed = torch.cat([case["k_cache"], case["v_cache"]], -1).transpose(1, 2).contiguous()
        case["k_cache"], case["v_cache"] = split_kv_cache(packed)
    else:
        _, case["k_cache"], case["v_cache"] = vec_layout(case["k_cache"], case["v_cache"])
    assert not case["k_cache"].is_contiguous()
    assert_close(tree_paged_attention(**case, use_triton=True), want, torch.float16)


def test_tree_triton_without_nodes_and_empty_requests() -> None:
    """node_pos [B, 0]; a request without rows; a batch without rows."""
    case = tree_case(
        [30, 20, 9], [0, 0, 0], [[0, 0], [], [0]], [[(4, 9)], [], []],
        num_heads=4, num_kv_heads=2, head_dim=16, block_size=16, dtype=torch.float32,
    )  # fmt: skip
    assert_close(
        tree_paged_attention(**case, use_triton=True), reference_tree_attention(case), torch.float32
    )
    case.update(
        q=case["q"][:0],
        query_start_loc=case["query_start_loc"][:1],
        block_table=case["block_table"][:0],
        context_lens=case["context_lens"][:0],
        node_pos=case["node_pos"][:0],
        cu_unseen=case["cu_unseen"][:1],
    )
    assert tree_paged_attention(**case, use_triton=True).shape == (0, 4, 16)


def test_tree_triton_chain() -> None:
    """A chain of 16 nodes (what a chain drafter verifies), bf16 at head dim 128."""
    parents = [j - 1 for j in range(16)]
    case = tree_case(
        [100], [16], [ancestor_masks(torch.tensor([parents]))[0].tolist()], [[(20, 60)]],
        num_heads=4, num_kv_heads=4, head_dim=128, block_size=32, dtype=torch.bfloat16,
    )  # fmt: skip
    out = tree_paged_attention(**case, use_triton=True)
    assert_close(out, reference_tree_attention(case), torch.bfloat16)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tree_startup_check_passes(dtype: torch.dtype) -> None:
    """The start-up check a GPU run makes, on CPU tensors (GQA group 3 padded to 4)."""
    assert check_triton_tree_attention(6, 2, 32, 16, dtype, "cpu") is None


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")  # the interpreter on NaN reads
def test_tree_startup_check_reports_a_wrong_or_failing_kernel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from vllm_vispec.kernels.tree import paged

    right = paged.tree_paged_attention_triton

    def reads_unseen_slots(**case) -> torch.Tensor:
        case["cu_unseen"] = torch.zeros_like(case["cu_unseen"])
        return right(**case)

    monkeypatch.setattr(paged, "tree_paged_attention_triton", reads_unseen_slots)
    failure = check_triton_tree_attention(4, 2, 32, 16, torch.float32, "cpu")
    assert failure is not None and "differs from its PyTorch reference by nan" in failure

    def fails(**case) -> torch.Tensor:
        raise ValueError("no kernel for this GPU\nat line 3")

    monkeypatch.setattr(paged, "tree_paged_attention_triton", fails)
    failure = check_triton_tree_attention(4, 2, 32, 16, torch.float32, "cpu")
    assert failure == "the Triton tree attention failed to run: ValueError: no kernel for this GPU"


# ------------------------------------------------------------------------------ compact_kv


@pytest.mark.parametrize("layout", ["plain", "gpu", "vec"])
def test_compact_kv_triton(layout: str) -> None:
    """Swap, chain, no-op and cross-block moves (reads before writes), on each cache layout."""
    k, v = kv_pair((5, 4, 2, 80), torch.float16)
    want = [compacted(c, SRC, DST) for c in (k, v)]
    if layout == "gpu":
        packed = torch.cat([k, v], -1).transpose(1, 2).contiguous()
        k, v = split_kv_cache(packed)
    elif layout == "vec":
        _, k, v = vec_layout(k, v)
    compact_kv(k, v, torch.tensor(SRC, dtype=torch.int32), torch.tensor(DST), use_triton=True)
    torch.testing.assert_close(k, want[0], rtol=0, atol=0)
    torch.testing.assert_close(v, want[1], rtol=0, atol=0)


def test_compact_kv_triton_no_pairs() -> None:
    k, v = kv_pair((2, 4, 1, 16), torch.float32)
    before = k.clone(), v.clone()
    empty = torch.zeros(0, dtype=torch.int64)
    compact_kv(k, v, empty, empty, use_triton=True)
    assert torch.equal(k, before[0]) and torch.equal(v, before[1])
