"""Kernel PyTorch paths against independent references.

The Triton tests live in test_kernels_triton.py and need TRITON_INTERPRET=1 before Triton is
imported, which other test modules (vLLM) do first; test_interpreted.py runs that file in a
fresh interpreter. The case builders below are shared with it.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from vllm_vispec.kernels import (
    absorb_queries,
    draft_paged_attention,
    naive_vision_adaptor,
    split_kv_cache,
    vision_adaptor,
)
from vllm_vispec.kernels.attention.selfcheck import CHECK_BATCH, paged_case, relative_error

# Max error relative to the output's scale, vs a float64 reference on the same inputs.
TOLERANCE = {torch.float32: 5e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
DTYPES = list(TOLERANCE)


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    """Max abs error over max(1, |ref|_inf) within the dtype's tolerance; NaN never passes."""
    assert out.shape == ref.shape
    err = relative_error(out, ref.double().cpu())
    assert err <= TOLERANCE[dtype], f"{dtype}: max error {err:.3g} relative to max(1, |ref|)"


def cu_from_lens(lens: list[int]) -> torch.Tensor:
    return torch.tensor([0, *itertools.accumulate(lens)], dtype=torch.int32)


def make_adaptor(
    hidden: int, num_heads: int, num_q: int, bias: bool, seed: int = 0
) -> dict[str, torch.Tensor | None]:
    """Random adaptor weights in float64, scaled so scores and outputs are O(1)."""
    gen = torch.Generator().manual_seed(seed)
    head_dim = hidden // num_heads

    def rand(*shape: int, std: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * std

    return {
        "q": rand(num_q, num_heads, head_dim, std=2.0),
        "k_weight": rand(hidden, hidden, std=hidden**-0.5),
        "v_weight": rand(hidden, hidden, std=hidden**-0.5),
        "o_weight": rand(hidden, hidden, std=hidden**-0.5),
        "k_bias": rand(hidden) if bias else None,
        "v_bias": rand(hidden) if bias else None,
    }


def cast(weights: dict[str, torch.Tensor | None], dtype: torch.dtype) -> dict:
    return {k: None if v is None else v.to(dtype) for k, v in weights.items()}


def make_images(lens: list[int], hidden: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(sum(lens), hidden, generator=gen, dtype=torch.float64), cu_from_lens(lens)


def absorbed_adaptor(x: torch.Tensor, cu: torch.Tensor, weights: dict, **kw) -> torch.Tensor:
    w = absorb_queries(weights["q"], weights["k_weight"])
    return vision_adaptor(
        x, cu, w, weights["v_weight"], weights["o_weight"], weights["v_bias"], **kw
    )


# Batches mixing decode (q_len 1) and prefill chunks; hidden spans cross block boundaries, some
# cover whole blocks, one hides the query's own position, one leaves early queries nothing.


# --------------------------------------------------------------------------- vision adaptor


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("num_q", [1, 2, 3])
def test_absorbed_adaptor_matches_naive(dtype: torch.dtype, bias: bool, num_q: int) -> None:
    weights = make_adaptor(hidden=96, num_heads=3, num_q=num_q, bias=bias)
    x, cu = make_images([5, 1, 130, 64, 63], hidden=96)
    ref = naive_vision_adaptor(x, cu, **weights)
    out = absorbed_adaptor(x.to(dtype), cu, cast(weights, dtype))
    assert out.dtype == dtype
    assert_close(out, ref, dtype)


def test_absorbed_adaptor_long_image() -> None:
    weights = make_adaptor(hidden=128, num_heads=4, num_q=2, bias=True)
    x, cu = make_images([4096, 3], hidden=128)
    ref = naive_vision_adaptor(x, cu, **weights)
    assert_close(absorbed_adaptor(x.float(), cu, cast(weights, torch.float32)), ref, torch.float32)


def test_adaptor_empty_batch() -> None:
    weights = cast(make_adaptor(hidden=64, num_heads=2, num_q=2, bias=True), torch.float32)
    x, cu = torch.empty(0, 64), torch.zeros(1, dtype=torch.int32)
    assert naive_vision_adaptor(x, cu, **weights).shape == (0, 2, 64)
    assert absorbed_adaptor(x, cu, weights).shape == (0, 2, 64)


def test_k_bias_cancels() -> None:
    """The absorbed path takes no k_bias: the naive output must not depend on it either."""
    weights = make_adaptor(hidden=64, num_heads=2, num_q=2, bias=True)
    x, cu = make_images([9, 17], hidden=64)
    unbiased = naive_vision_adaptor(x, cu, **{**weights, "k_bias": None})
    torch.testing.assert_close(naive_vision_adaptor(x, cu, **weights), unbiased)


# ------------------------------------------------------------------------ draft attention


def dense_reference(case: dict) -> torch.Tensor:
    """Independent oracle: un-page each request in order, mask, and call SDPA per request."""
    q, k_cache, v_cache = case["q"].double(), case["k_cache"].double(), case["v_cache"].double()
    block_size, num_kv_heads = k_cache.shape[1:3]
    group = q.shape[1] // num_kv_heads
    starts, cu = case["query_start_loc"].tolist(), case["cu_unseen"].tolist()
    outs = []
    for b, seq_len in enumerate(case["seq_lens"].tolist()):
        pos = torch.arange(seq_len)
        blocks = case["block_table"][b].long()[pos // block_size].clamp(max=k_cache.shape[0] - 1)
        k = k_cache[blocks, pos % block_size].nan_to_num().transpose(0, 1)  # [nkv, L, hd]
        v = v_cache[blocks, pos % block_size].nan_to_num().transpose(0, 1)
        visible = torch.ones(seq_len, dtype=torch.bool)
        for i in range(cu[b], cu[b + 1]):
            visible[case["unseen_start"][i] : case["unseen_end"][i]] = False
        qb = q[starts[b] : starts[b + 1]].transpose(0, 1)  # [nh, n_q, hd]
        mask = visible[None, :] & (pos[None, :] <= pos[seq_len - qb.shape[1] :, None])
        attn = F.scaled_dot_product_attention(
            qb,
            k.repeat_interleave(group, 0),
            v.repeat_interleave(group, 0),
            attn_mask=mask,
            scale=case["scale"],
        )
        outs.append(torch.where(mask.any(-1)[None, :, None], attn, 0.0).transpose(0, 1))
    return torch.cat(outs)


@pytest.mark.parametrize(("num_heads", "num_kv_heads", "block_size"), [(4, 4, 16), (8, 2, 32)])
def test_naive_attention_matches_dense(num_heads: int, num_kv_heads: int, block_size: int) -> None:
    case = paged_case(
        **CHECK_BATCH,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=32,
        block_size=block_size,
        dtype=torch.float64,
    )
    out = draft_paged_attention(**case)
    assert not out.isnan().any()
    torch.testing.assert_close(out, dense_reference(case))
    assert out[-5:-2].abs().max() == 0  # queries whose earlier positions are all hidden


def test_split_kv_cache_gpu_layout() -> None:
    """vLLM 0.32 GPU backends: [num_blocks, nkv, block_size, 2 * hd], K then V in the last dim."""
    kv = torch.randn(3, 2, 16, 2 * 32)
    k, v = split_kv_cache(kv)
    assert k.shape == v.shape == (3, 16, 2, 32)
    torch.testing.assert_close(k[1, 5, 0], kv[1, 0, 5, :32])
    torch.testing.assert_close(v[2, 7, 1], kv[2, 1, 7, 32:])


@pytest.mark.parametrize(("isa", "block_size"), [("vec", 32), ("vec16", 16)])
def test_split_kv_cache_cpu_layout(isa: str, block_size: int) -> None:
    """Write through vLLM's own CPU cache op, read back through the views."""
    ops = pytest.importorskip("vllm._custom_ops")
    if not hasattr(torch.ops._C, "cpu_attn_reshape_and_cache"):
        pytest.skip("vLLM CPU build not installed")
    num_blocks, num_kv_heads, head_dim = 4, 2, 64
    kv = torch.zeros(num_blocks, num_kv_heads, block_size, 2 * head_dim)
    k_raw, v_raw = kv.view(num_blocks, num_kv_heads, 2 * block_size, head_dim).chunk(2, dim=2)
    key, value = torch.randn(5, num_kv_heads, head_dim), torch.randn(5, num_kv_heads, head_dim)
    slots = torch.tensor([0, 5, block_size + 3, 2 * block_size - 1, 3 * block_size])
    ops.cpu_attn_reshape_and_cache(
        key, value, k_raw, v_raw, slots, isa, k_scale=1.0, v_scale=1.0, kv_cache_dtype="auto"
    )
    k, v = split_kv_cache(kv, cpu_isa=isa)
    torch.testing.assert_close(k[slots // block_size, slots % block_size], key)
    torch.testing.assert_close(v[slots // block_size, slots % block_size], value)
    with pytest.raises(NotImplementedError):
        split_kv_cache(kv, cpu_isa="amx")
