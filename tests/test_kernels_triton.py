"""Triton kernels on CPU through Triton's interpreter, against the PyTorch references.

Needs TRITON_INTERPRET=1 before Triton is first imported, so a full test run skips this module
and test_interpreted.py runs it in a subprocess. Run it alone with
``TRITON_INTERPRET=1 python -m pytest tests/test_kernels_triton.py``.
"""

from __future__ import annotations

import os

import pytest

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 (run by test_interpreted.py)", allow_module_level=True)

import torch
from test_kernels import (
    DTYPES,
    TOLERANCE,
    absorbed_adaptor,
    assert_close,
    cast,
    make_adaptor,
    make_images,
)
from vllm_vispec.kernels import absorb_queries, draft_paged_attention, naive_vision_adaptor
from vllm_vispec.kernels.adaptor.absorbed import pool_images_torch
from vllm_vispec.kernels.adaptor.pool import pool_images_triton
from vllm_vispec.kernels.attention.selfcheck import (
    CHECK_BATCH,
    check_triton_attention,
    paged_case,
    reference_attention,
)

# --------------------------------------------------------------------------- vision adaptor


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [False, True])
def test_adaptor_triton_matches_naive(dtype: torch.dtype, bias: bool) -> None:
    weights = make_adaptor(hidden=96, num_heads=3, num_q=2, bias=bias)
    x, cu = make_images([5, 1, 130, 64, 63], hidden=96)
    ref = naive_vision_adaptor(x, cu, **weights)
    out = absorbed_adaptor(x.to(dtype), cu, cast(weights, dtype), use_triton=True)
    assert out.dtype == dtype
    assert_close(out, ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("lens", "num_splits"),
    [([1], None), ([4096], None), ([1, 4096, 33], 5), ([64, 65, 63, 1, 200], 2)],
)
def test_pool_triton_matches_torch(dtype: torch.dtype, lens: list[int], num_splits: int) -> None:
    """The Triton part alone (scores, split online softmax, pooling) vs the fp64 PyTorch path."""
    weights = make_adaptor(hidden=64, num_heads=2, num_q=2, bias=False)
    w = absorb_queries(weights["q"], weights["k_weight"])
    x, cu = make_images(lens, hidden=64)
    ref = pool_images_torch(x.to(dtype), cu, w.double())
    out = pool_images_triton(x.to(dtype), cu, w.float(), num_splits=num_splits)
    assert out.dtype == torch.float32
    assert_close(out, ref, dtype)


def test_adaptor_triton_empty_batch() -> None:
    weights = cast(make_adaptor(hidden=64, num_heads=2, num_q=2, bias=True), torch.float32)
    out = absorbed_adaptor(
        torch.empty(0, 64), torch.zeros(1, dtype=torch.int32), weights, use_triton=True
    )
    assert out.shape == (0, 2, 64)


def test_adaptor_triton_strided_input() -> None:
    """x may be a column slice of a wider buffer (e.g. inputs_embeds rows of a bigger tensor)."""
    weights = make_adaptor(hidden=64, num_heads=2, num_q=2, bias=True)
    x, cu = make_images([7, 50], hidden=64)
    wide = torch.cat([x, torch.full_like(x, float("nan"))], dim=1).float()
    out = absorbed_adaptor(wide[:, :64], cu, cast(weights, torch.float32), use_triton=True)
    assert_close(out, naive_vision_adaptor(x, cu, **weights), torch.float32)


# ------------------------------------------------------------------------ draft attention


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("num_heads", "num_kv_heads", "head_dim", "block_size"),
    [(4, 4, 32, 16), (8, 2, 64, 32), (6, 2, 32, 64), (3, 1, 48, 16)],
)
def test_attention_triton_matches_reference(
    dtype: torch.dtype, num_heads: int, num_kv_heads: int, head_dim: int, block_size: int
) -> None:
    """The start-up check the draft runs on GPUs, at the interpreter's tighter tolerance."""
    check_triton_attention(
        num_heads, num_kv_heads, head_dim, block_size, dtype, "cpu", tolerance=TOLERANCE[dtype]
    )


@pytest.mark.parametrize("q_len", [1, 17])
def test_attention_triton_without_hidden(q_len: int) -> None:
    """No image anywhere: plain causal paged attention (decode, then a prefill chunk)."""
    case = paged_case(
        [q_len, q_len],
        [q_len, 45],
        [[], []],
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        block_size=16,
        dtype=torch.float32,
    )
    out = draft_paged_attention(**case, use_triton=True, max_query_len=q_len)
    assert_close(out, reference_attention(case), torch.float32)


def test_attention_triton_long_prefill_many_images() -> None:
    """A long chunk (several query blocks) over many small images, some inside one page."""
    spans = [(s, s + 9) for s in range(20, 1500, 37)]  # 9 hidden of every 37 positions
    spans += [(1500, 2000)]  # and a big image covering whole pages
    case = paged_case(
        [300],
        [2100],
        [spans],
        num_heads=4,
        num_kv_heads=4,
        head_dim=32,
        block_size=32,
        dtype=torch.float16,
    )
    out = draft_paged_attention(**case, use_triton=True)
    assert_close(out, reference_attention(case), torch.float16)


def test_attention_triton_on_vllm_cache_views() -> None:
    """K/V as strided views into vLLM 0.32's packed GPU-layout cache."""
    from vllm_vispec.kernels import split_kv_cache

    case = paged_case(
        **CHECK_BATCH, num_heads=4, num_kv_heads=2, head_dim=32, block_size=16, dtype=torch.float32
    )
    packed = torch.cat([case["k_cache"], case["v_cache"]], dim=-1).transpose(1, 2).contiguous()
    case["k_cache"], case["v_cache"] = split_kv_cache(packed)
    assert not case["k_cache"].is_contiguous()
    out = draft_paged_attention(**case, use_triton=True)
    assert_close(out, reference_attention(case), torch.float32)


def test_attention_triton_empty_batch() -> None:
    case = paged_case(
        [1], [3], [[]], num_heads=2, num_kv_heads=2, head_dim=32, block_size=16, dtype=torch.float32
    )
    case.update(
        q=case["q"][:0],
        query_start_loc=case["query_start_loc"][:1],
        seq_lens=case["seq_lens"][:0],
        block_table=case["block_table"][:0],
        cu_unseen=case["cu_unseen"][:1],
    )
    assert draft_paged_attention(**case, use_triton=True).shape == (0, 2, 32)


def test_startup_check_catches_a_wrong_or_failing_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    from vllm_vispec.kernels.attention import paged

    right = paged.draft_paged_attention_triton

    def reads_unseen_slots(**case):
        case["cu_unseen"] = torch.zeros_like(case["cu_unseen"])
        return right(**case)

    monkeypatch.setattr(paged, "draft_paged_attention_triton", reads_unseen_slots)
    with pytest.raises(RuntimeError, match="differs from its PyTorch reference by nan"):
        check_triton_attention(4, 2, 32, 16, torch.float32, "cpu")

    def fails(**case):
        raise ValueError("no kernel for this GPU")

    monkeypatch.setattr(paged, "draft_paged_attention_triton", fails)
    with pytest.raises(RuntimeError, match="failed to run: no kernel for this GPU"):
        check_triton_attention(4, 2, 32, 16, torch.float32, "cpu")
