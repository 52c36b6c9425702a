"""One check of the GPU side without vLLM: every Triton kernel against its PyTorch reference at
the released drafts' shapes, their speed and share of peak HBM bandwidth, the reference draft's
decode step in a CUDA graph (ViSpec against a plain EAGLE layer), the SpecVLM compressor's
prefill per image, and a few bf16 training steps of the specvlm recipe on a tiny target.

Device command (one call, about 5 minutes on an H100; the files come back from $OUT):

    run(command="if command -v make >/dev/null; then make gpu-check GPU_OUT=$OUT; else "
                "PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out $OUT; fi",
        timeout_s=540)

Here, on CPU (tiny shapes, Triton's interpreter; tests/test_gpu_check.py runs this):

    python benchmarks/gpu_check.py --tiny --out /tmp/gpu-check

The GPU machine has torch, Triton and transformers but neither vLLM nor an install of this
package: the script imports ``vllm_vispec`` from its own checkout and maps ``kernels/`` to
``vllm_vispec.kernels`` itself (setup.py's package_dir does that for installs). It blocks
``import vllm`` wherever it runs, so whatever needs vLLM fails here as it would there. Each part
runs on its own: a failure is recorded with its traceback and the other parts still run. Writes
gpu_check.json, gpu_check.md and gpu_check.png (when matplotlib is there) into --out; exits 1
when a part failed or a check did not pass. Goals are reported, not asserted.

Parts: imports (the tooling imports with vLLM blocked); correctness (adaptor, draft attention,
tree attention, tree verification and KV compaction against float64 references: a case passes
when max |error| / max(1, |reference|) is within its dtype's tolerance, 0 for compaction);
adaptor_speed, attention_speed, verify_speed (Triton against the PyTorch reference and SDPA,
bytes moved, share of peak HBM); draft_step (ViSpec's decode step against a plain EAGLE layer,
CUDA graphs); compressor (SpecVLM's primitives per image); training (bf16 steps of the trainer,
loss finite and falling).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import importlib
import importlib.util
import itertools
import json
import math
import os
import pathlib
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

if "--tiny" in sys.argv:  # Triton reads it once, when first imported
    os.environ["TRITON_INTERPRET"] = "1"
VLLM_INSTALLED = importlib.util.find_spec("vllm") is not None
sys.modules["vllm"] = None  # type: ignore[assignment]  # from here on `import vllm` fails
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _import_checkout() -> None:
    """Import ``vllm_vispec`` from this checkout, with ``kernels/`` as ``vllm_vispec.kernels``."""
    sys.path.insert(1, str(ROOT))  # after benchmarks/, whose kernels.py is imported below
    import vllm_vispec

    init = ROOT / "kernels" / "__init__.py"
    spec = importlib.util.spec_from_file_location(
        "vllm_vispec.kernels", init, submodule_search_locations=[str(init.parent)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    vllm_vispec.kernels = module


_import_checkout()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402
from vllm_vispec.kernels import (  # noqa: E402
    absorb_queries,
    compact_kv,
    draft_paged_attention,
    naive_draft_paged_attention,
    naive_vision_adaptor,
    split_kv_cache,
    tree_paged_attention,
    vision_adaptor,
)
from vllm_vispec.kernels.attention.selfcheck import CHECK_TOLERANCE, paged_case  # noqa: E402
from vllm_vispec.kernels.tree import (  # noqa: E402
    VerifyAttention,
    ancestor_masks,
    naive_compact_kv,
    naive_tree_paged_attention,
)
from vllm_vispec.kernels.tree.selfcheck import random_parents, tree_case  # noqa: E402

import vllm_vispec  # noqa: E402

# benchmarks/kernels.py (this folder comes before the checkout's kernels/ on sys.path)
from kernels import MODELS, adaptor_fns, cpu_medians_ms, machine, make_inputs  # noqa: E402
from vllm_vispec.compressor import ElasticCompressor  # noqa: E402
from vllm_vispec.config import ViSpecConfig  # noqa: E402

# The tooling this check runs, by module: the one place to re-point when it moves. The parts
# import it when they run, so a missing module fails those parts alone.
TOOLING = {
    "reference": "vllm_vispec.tools.reference",
    "trainer": "vllm_vispec.tools.train.trainer",
    "losses": "vllm_vispec.tools.train.losses",
    "tiny_targets": "vllm_vispec.tools.testing.tiny_targets",
    "toy_world": "vllm_vispec.tools.toy.world",
}

# Peak HBM bandwidth by device name (vendors' figures), the first match wins.
PEAK_HBM_TBPS = (("H200", 4.8), ("H100 PCIe", 2.0), ("H100", 3.35))
NUM_Q = 2  # adaptor queries of the released drafts
# A request's draft positions in order: text runs as counts, images in brackets ("9 [256] 40").
Segments = str


def tool(name: str) -> Any:
    """A module of TOOLING, imported when a part first needs it."""
    return importlib.import_module(TOOLING[name])


@dataclasses.dataclass(frozen=True)
class Plan:
    """The shapes and cases of one run: the released drafts' on a GPU, tiny ones with --tiny."""

    layouts: dict[str, tuple[int, int, int]]  # query heads, KV heads, head dim (per rank)
    draft_layouts: tuple[str, ...]  # the draft's attention and tree expansion
    target_layouts: tuple[str, ...]  # tree verification and KV compaction
    dtypes: tuple[torch.dtype, ...]  # every layout; the first layout of a kernel also in fp32
    block_sizes: tuple[int, ...]
    adaptor_models: dict[str, tuple[int, int]]  # hidden size, heads
    adaptor_images: tuple[int, ...]  # image tokens, one varlen batch
    draft_batch: list[tuple[Segments, int, int]]  # segments, queries, positions not cached yet
    tree_batch: list[tuple[Segments, int]]  # context, tree nodes
    verify_batch: list[tuple[int, int]]  # context, tree rows (root included)
    timing_tokens: tuple[int, ...]  # image tokens of the timed adaptor and attention cases
    timing_text: tuple[int, int]  # text positions before and after the timed image
    timing_requests: int  # decode requests of the timed draft attention
    verify_batches: tuple[int, ...]  # trees of the timed verification
    verify_context: int
    draft: dict[str, Any]  # ViSpecConfig of the decode step and the compressor
    step_context: int
    step_batches: tuple[int, ...]
    image_tokens: int  # the compressor's image; hidden from ViSpec's step context
    train_steps: int
    train_batch: int


# Released ViSpec drafts use plain multi-head attention (docs: vispec-reference.md); their
# targets' own GQA layout is what tree verification reads; a 72B draft (64 heads, 8 KV heads of
# 128) splits its heads over 4 or 8 tensor-parallel ranks.
GPU = Plan(
    layouts={
        "qwen2.5-vl-7b draft": (28, 28, 128),
        "qwen2.5-vl-7b target": (28, 4, 128),
        "llava-1.6-13b": (40, 40, 128),
        "72b tp4": (16, 2, 128),
        "72b tp8": (8, 1, 128),
    },
    draft_layouts=("qwen2.5-vl-7b draft", "llava-1.6-13b", "72b tp4", "72b tp8"),
    target_layouts=("qwen2.5-vl-7b target", "llava-1.6-13b", "72b tp4", "72b tp8"),
    dtypes=(torch.bfloat16, torch.float16),
    block_sizes=(16, 32),
    adaptor_models={m: MODELS[m] for m in ("qwen2.5-vl-7b", "llava-1.6-13b")},
    adaptor_images=(256, 4096, 1024, 577),
    draft_batch=[
        ("37 [1024] 211", 1, 0),  # decode after an image
        ("20 [2048] 50 [4096]", 512, 2596),  # a prefill chunk from and to inside an image
        ("64 [256] 30 [576] [1024] 100", 300, 0),  # a prefix-cache hit inside the third image
        ("9 [256] 40 [1024] 7 [4096] 33 [729] 250", 4, 0),  # four images, K=3 rows
        ("17", 1, 0),
    ],
    tree_batch=[
        ("37 [1024] 211", 63),
        ("9 [256] 40 [1024] 7 [4096] 33 [729] 250", 29),
        ("300", 12),
        ("64 [256] [576] 100", 1),
    ],
    verify_batch=[(1272, 30), (6444, 30), (300, 64), (2050, 13)],
    timing_tokens=(1024, 4096),
    timing_text=(200, 300),
    timing_requests=32,
    verify_batches=(1, 8),
    verify_context=2048,
    draft={
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_attention_heads": 28,
        "num_key_value_heads": 28,
        "vocab_size": 152064,
        "qkv_bias": True,
        "rope_theta": 1e6,
    },
    step_context=2048,
    step_batches=(1, 8),
    image_tokens=1024,
    train_steps=12,
    train_batch=4,
)

TINY = Plan(
    layouts={"tiny mha": (2, 2, 32), "tiny gqa": (4, 2, 32)},
    draft_layouts=("tiny mha",),
    target_layouts=("tiny gqa",),
    dtypes=(torch.bfloat16,),
    block_sizes=(16,),
    adaptor_models={"tiny": (64, 2)},
    adaptor_images=(5, 70, 33),
    draft_batch=[("5 [20] 6", 1, 0), ("3 [24] 4 [40]", 12, 25)],
    tree_batch=[("5 [20] 6", 13), ("9", 5)],
    verify_batch=[(20, 6), (7, 3)],
    timing_tokens=(24,),
    timing_text=(3, 5),
    timing_requests=2,
    verify_batches=(1,),
    verify_context=24,
    draft={
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "vocab_size": 256,
        "qkv_bias": True,
    },
    step_context=24,
    step_batches=(1,),
    image_tokens=12,
    train_steps=6,
    train_batch=2,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out", type=pathlib.Path, required=True, help="folder for gpu_check.{json,md,png}"
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="tiny shapes on CPU through Triton's interpreter (tests/test_gpu_check.py); "
        "speed figures are then CPU wall times, not GPU ones",
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        metavar="PART",
        help=f"parts to run (default all: {' '.join(PARTS)})",
    )
    return parser.parse_args()


# ------------------------------------------------------------------------------------- cases


def positions(segments: Segments) -> tuple[int, list[tuple[int, int]]]:
    """A request's draft positions and unseen intervals: an image keeps only its last position
    (ViSpec's compressed token, num_q 2) and hides the others."""
    pos, hidden = 0, []
    for run in segments.split():
        n = int(run.strip("[]"))
        if run.startswith("["):
            hidden.append((pos, pos + n - 1))
        pos += n
    return pos, hidden


def cache_args(
    plan: Plan, layout: str, dtype: torch.dtype, block_size: int, device: torch.device
) -> dict[str, Any]:
    """The keyword arguments the selfchecks' case builders share."""
    heads, kv_heads, head_dim = plan.layouts[layout]
    return {
        "num_heads": heads,
        "num_kv_heads": kv_heads,
        "head_dim": head_dim,
        "block_size": block_size,
        "dtype": dtype,
        "device": device,
    }


def draft_case(
    plan: Plan,
    layout: str,
    dtype: torch.dtype,
    block_size: int,
    device: torch.device,
    batch: list[tuple[Segments, int, int]] | None = None,
) -> dict:
    """:func:`draft_paged_attention` arguments for ``batch`` (default the plan's)."""
    q_lens, seq_lens, hidden = [], [], []
    for segments, q_len, uncached in batch or plan.draft_batch:
        total, spans = positions(segments)
        q_lens.append(q_len)
        seq_lens.append(total - uncached)
        hidden.append(spans)
    return paged_case(
        q_lens, seq_lens, hidden, **cache_args(plan, layout, dtype, block_size, device)
    )


def tree_batch_case(
    plan: Plan, layout: str, dtype: torch.dtype, block_size: int, device: torch.device
) -> dict:
    """:func:`tree_paged_attention` arguments: one row per node (its ancestors' bits)."""
    contexts, nodes, masks, hidden = [], [], [], []
    for b, (segments, n) in enumerate(plan.tree_batch):
        total, spans = positions(segments)
        contexts.append(total)
        nodes.append(n)
        hidden.append(spans)
        masks.append(ancestor_masks(torch.tensor([random_parents(n, seed=b)]))[0].tolist())
    kw = cache_args(plan, layout, dtype, block_size, device)
    return tree_case(contexts, nodes, masks, hidden, **kw)


def verify_parents(n: int, seed: int) -> list[int]:
    """A tree of ``n`` rows: the root, then nodes whose parent is one of the 4 before them."""
    gen = torch.Generator().manual_seed(seed)
    return [-1] + [int(torch.randint(max(0, i - 4), i, (), generator=gen)) for i in range(1, n)]


def verify_case(
    plan: Plan,
    layout: str,
    dtype: torch.dtype,
    block_size: int,
    device: torch.device,
    batch: list[tuple[int, int]] | None = None,
) -> tuple[VerifyAttention, dict]:
    """A target step verifying trees scheduled right after their contexts (``batch``, default
    the plan's), over a shuffled paged cache: the step's VerifyAttention and the case."""
    batch = batch or plan.verify_batch
    contexts, rows = zip(*batch, strict=True)
    kw = cache_args(plan, layout, dtype, block_size, device)
    case = paged_case(list(rows), [c + n for c, n in batch], [[] for _ in batch], **kw)
    width = max(rows)
    parents = [verify_parents(n, seed=b) + [-1] * (width - n) for b, n in enumerate(rows)]
    verify = VerifyAttention(
        torch.arange(len(batch), device=device),
        case["query_start_loc"][:-1].long(),
        torch.tensor(contexts, device=device),
        ancestor_masks(torch.tensor(parents, device=device)),
        torch.tensor(rows, device=device),
    )
    return verify, case


def compare(out: torch.Tensor, ref: torch.Tensor, tolerance: float) -> dict:
    """Max abs error, and over max(1, |reference|) (the kernels' start-up checks' measure)
    against ``tolerance``; NaN never passes. Computed on ``out``'s device."""
    ref = ref.to(out.device, torch.float64)
    abs_err = (out.double() - ref).abs().max().item()
    ref_max = ref.abs().max().item()
    rel = abs_err / max(1.0, ref_max)
    return {
        "max_abs_err": abs_err,
        "ref_max": ref_max,
        "rel_err": rel,
        "tolerance": tolerance,
        "passed": rel <= tolerance,
    }


# ------------------------------------------------------------------------------- correctness


def check_adaptor(
    plan: Plan, model: str, dtype: torch.dtype, _block_size: None, device: torch.device
) -> dict:
    """The absorbed adaptor (Triton pooling) on images of the plan's sizes in one batch."""
    hidden, heads = plan.adaptor_models[model]
    lens = plan.adaptor_images
    inp = make_inputs(sum(lens), hidden, heads, NUM_Q, dtype, device, seed=0)
    cu = [0, *itertools.accumulate(lens)]
    inp["cu_seqlens"] = torch.tensor(cu, dtype=torch.int32, device=device)
    w = absorb_queries(inp["q"], inp["k_weight"])
    weights = inp["v_weight"], inp["o_weight"], inp["v_bias"]
    out = vision_adaptor(
        inp["x"], inp["cu_seqlens"], w, *weights, max_seqlen=max(lens), use_triton=True
    )
    wide = {k: v.double() if v.is_floating_point() else v for k, v in inp.items()}
    return compare(out, naive_vision_adaptor(**wide), CHECK_TOLERANCE[dtype])


def check_paged(
    build: Callable[..., dict],
    kernel: Callable[..., torch.Tensor],
    reference: Callable[..., torch.Tensor],
    plan: Plan,
    layout: str,
    dtype: torch.dtype,
    block_size: int,
    device: torch.device,
) -> dict:
    """A paged attention kernel on the plan's batch against its reference, which computes in
    float64 over the cache's exact values when given float64 queries."""
    case = build(plan, layout, dtype, block_size, device)
    out = kernel(**case, use_triton=True)
    ref = reference(**{**case, "q": case["q"].double()})
    return compare(out, ref, CHECK_TOLERANCE[dtype])


def check_verify(
    plan: Plan, layout: str, dtype: torch.dtype, block_size: int, device: torch.device
) -> dict:
    """The tree kernel on what the target's verification hands it (on CUDA its dispatcher,
    VerifyAttention, makes exactly this call)."""
    verify, case = verify_case(plan, layout, dtype, block_size, device)
    args = verify.kernel_args(
        case["q"], case["k_cache"], case["v_cache"], case["block_table"], case["scale"]
    )
    out = tree_paged_attention(*args, max_query_len=verify.masks.shape[1], use_triton=True)
    ref = naive_tree_paged_attention(args[0].double(), *args[1:])
    return compare(out, ref, CHECK_TOLERANCE[dtype])


def check_compact(
    plan: Plan, layout: str, dtype: torch.dtype, block_size: int, device: torch.device
) -> dict:
    """Accepted nodes slid next to their root, sources among the destinations, in views of
    vLLM's packed GPU cache: bit-exact against the reference."""
    _, kv_heads, head_dim = plan.layouts[layout]
    gen = torch.Generator().manual_seed(0)
    max_blocks = max(c + n for c, n in plan.verify_batch) // block_size + 1
    num_blocks = len(plan.verify_batch) * max_blocks + 1
    table = torch.randperm(num_blocks, generator=gen)[: num_blocks - 1].view(-1, max_blocks)
    src, dst = [], []
    for b, (context, rows) in enumerate(plan.verify_batch):
        accepted = [j for j in (2, 3, 5, 9, 17, 28) if j < rows]
        for node, slot in zip(accepted, range(1, len(accepted) + 1), strict=True):
            for pos, slots in ((context + node, src), (context + slot, dst)):
                slots.append(int(table[b, pos // block_size]) * block_size + pos % block_size)
    src_t, dst_t = (torch.tensor(s, device=device) for s in (src, dst))
    shape = (num_blocks, kv_heads, block_size, 2 * head_dim)
    on_device = torch.Generator(device=device).manual_seed(0)
    packed = torch.randn(shape, generator=on_device, device=device, dtype=dtype)
    want = packed.clone()
    naive_compact_kv(*split_kv_cache(want), src_t, dst_t)
    compact_kv(*split_kv_cache(packed), src_t, dst_t, use_triton=True)
    return compare(packed, want, 0.0)


CHECKS: dict[str, tuple[Callable[..., dict], str]] = {
    "adaptor": (check_adaptor, "adaptor_models"),
    "draft_attention": (
        functools.partial(
            check_paged, draft_case, draft_paged_attention, naive_draft_paged_attention
        ),
        "draft_layouts",
    ),
    "tree_attention": (
        functools.partial(
            check_paged, tree_batch_case, tree_paged_attention, naive_tree_paged_attention
        ),
        "draft_layouts",
    ),
    "tree_verify": (check_verify, "target_layouts"),
    "compact_kv": (check_compact, "target_layouts"),
}


def correctness(plan: Plan, device: torch.device, _peak: float | None) -> dict:
    """Every kernel, layout (model), dtype and block size; the first layout also in fp32."""
    todo = []
    for kernel, (_, which) in CHECKS.items():
        layouts = list(getattr(plan, which))
        sizes = (None,) if kernel == "adaptor" else plan.block_sizes
        todo += [(kernel, lay, d, bs) for lay in layouts for d in plan.dtypes for bs in sizes]
        todo += [(kernel, layouts[0], torch.float32, bs) for bs in sizes]
    cases = []
    for kernel, layout, dtype, block_size in tqdm(todo, desc="correctness", unit="case"):
        case = {
            "kernel": kernel,
            "layout": layout,
            "dtype": str(dtype).removeprefix("torch."),
            "block_size": block_size,
        }
        try:
            case.update(CHECKS[kernel][0](plan, layout, dtype, block_size, device))
        except Exception:
            case.update(passed=False, error=traceback.format_exc())
        cases.append(case)
        if not case["passed"]:
            tqdm.write(f"FAILED {case}")
    failed = sum(not c["passed"] for c in cases)
    return {"cases": cases, "failed": failed, "passed": failed == 0}


# ------------------------------------------------------------------------------------- speed


def bench(fn: Callable[[], object], cuda: bool) -> float:
    """Median ms: triton's do_bench on a GPU (warm, L2 flushed between runs), wall time of a
    few runs after a warm-up on CPU."""
    if cuda:
        import triton.testing

        return triton.testing.do_bench(fn, return_mode="median")
    return cpu_medians_ms({"fn": fn}, repeats=3)["fn"]


def speed_row(
    kernel: str, shape: str, times: dict[str, float], nbytes: int, peak_tbps: float | None
) -> dict:
    """Times (ms, the first is Triton's), the others' ratio to it, and the bytes the kernel
    must move over its time, as TB/s and as a share of the device's peak."""
    fast = next(iter(times.values()))
    tbps = nbytes / fast / 1e9
    return {
        "kernel": kernel,
        "shape": shape,
        "ms": times,
        "slower_than_triton": {k: v / fast for k, v in list(times.items())[1:]},
        "bytes": nbytes,
        "tbps": tbps,
        "hbm_fraction": tbps / peak_tbps if peak_tbps else None,
    }


def adaptor_speed(plan: Plan, device: torch.device, peak: float | None) -> dict:
    """One image at the first model's width: the Triton adaptor (queries absorbed once), its
    pooling alone, the PyTorch paths and the reference draft's adaptor (projections + SDPA)."""
    reference = tool("reference")
    model, (hidden, heads) = next(iter(plan.adaptor_models.items()))
    rows = []
    for tokens in plan.timing_tokens:
        inp = make_inputs(tokens, hidden, heads, NUM_Q, torch.bfloat16, device, seed=0)
        triton_fns, torch_fns = (adaptor_fns(inp, tokens, use_triton=u) for u in (True, False))
        linear = {
            n: functools.partial(F.linear, weight=inp[f"{n}_weight"], bias=inp.get(f"{n}_bias"))
            for n in ("k", "v", "o")
        }
        fns = {
            "triton": triton_fns["absorbed_w_cached"],
            "torch_absorbed": torch_fns["absorbed_w_cached"],
            "torch_naive": torch_fns["naive"],
            "reference_sdpa": functools.partial(
                reference.vision_adaptor, inp["x"], inp["q"], linear["k"], linear["v"], linear["o"]
            ),
        }
        elem, shape = inp["x"].element_size(), f"{model}, {tokens} tokens, bf16"
        x_bytes = tokens * hidden * elem
        times = {name: bench(fn, device.type == "cuda") for name, fn in fns.items()}
        # x read once, v_proj and o_proj weights; the absorbed queries are a per-weights constant.
        rows.append(speed_row("adaptor", shape, times, x_bytes + 2 * hidden**2 * elem, peak))
        pools = {
            k: bench(f["pool_only"], device.type == "cuda")
            for k, f in (("triton", triton_fns), ("torch", torch_fns))
        }
        rows.append(speed_row("adaptor pooling (x once)", shape, pools, x_bytes, peak))
    return {"rows": rows}


def attention_speed(plan: Plan, device: torch.device, peak: float | None) -> dict:
    """Decode requests of text, one image, text, at the first draft layout: the Triton kernel
    (hidden pages never read) against the PyTorch reference and SDPA over the whole padded KV
    under a mask (what leaving unseen positions in the cache costs)."""
    layout, block_size = plan.draft_layouts[0], 16
    heads, kv_heads, head_dim = plan.layouts[layout]
    cuda, rows = device.type == "cuda", []
    for tokens in plan.timing_tokens:
        segments = f"{plan.timing_text[0]} [{tokens}] {plan.timing_text[1]}"
        n = plan.timing_requests
        batch = [(segments, 1, 0)] * n
        case = draft_case(plan, layout, torch.bfloat16, block_size, device, batch)
        total, spans = positions(segments)
        pos = torch.arange(total, device=device)
        blocks = case["block_table"].long()[:, pos // block_size]
        dense_k, dense_v = (
            torch.nan_to_num(c[blocks, pos % block_size]).transpose(1, 2)  # [n, kv, L, hd]
            for c in (case["k_cache"], case["v_cache"])
        )
        visible = torch.ones(total, dtype=torch.bool, device=device)
        for start, end in spans:
            visible[start:end] = False
        q = case["q"].view(n, heads, 1, head_dim)
        fns = {
            "triton": functools.partial(
                draft_paged_attention, **case, max_query_len=1, use_triton=True
            ),
            "torch_reference": functools.partial(naive_draft_paged_attention, **case),
            "sdpa_padded_masked": functools.partial(
                F.scaled_dot_product_attention,
                q,
                dense_k,
                dense_v,
                attn_mask=visible[None, None, None],
                scale=case["scale"],
                enable_gqa=kv_heads != heads,
            ),
        }
        times = {name: bench(fn, cuda) for name, fn in fns.items()}
        elem = case["q"].element_size()
        kv_bytes = n * int(visible.sum()) * kv_heads * head_dim * 2 * elem
        shape = f"{layout}, {n} decode requests of {total} positions ({tokens}-token image), bf16"
        rows.append(speed_row("draft attention", shape, times, kv_bytes + 2 * q.nbytes, peak))
    return {"rows": rows}


def through(
    verify: VerifyAttention, attention: Callable[..., torch.Tensor], args: tuple, **kw: Any
) -> torch.Tensor:
    """``attention`` (the tree kernel or its reference) on the rows the step's dispatcher hands
    it, ``args`` being the dispatcher's (queries, caches, block table, scale)."""
    return attention(*verify.kernel_args(*args), **kw)


def verify_speed(plan: Plan, device: torch.device, peak: float | None) -> dict:
    """Trees after their contexts at the first target layout: the Triton kernel (with the
    dispatcher's gathers of the rows) against the PyTorch reference and the dense-mask SDPA
    over the same rows (gathering each tree's range first, as the CPU path does)."""
    layout, block_size = plan.target_layouts[0], 16
    _, kv_heads, head_dim = plan.layouts[layout]
    rows_per_tree = plan.verify_batch[0][1]
    cuda, rows = device.type == "cuda", []
    for trees in plan.verify_batches:
        batch = [(plan.verify_context, rows_per_tree)] * trees
        verify, case = verify_case(plan, layout, torch.bfloat16, block_size, device, batch)
        args = (case["q"], case["k_cache"], case["v_cache"], case["block_table"], case["scale"])
        kernel = functools.partial(through, verify, tree_paged_attention, args, use_triton=True)
        fns = {
            "triton": functools.partial(kernel, max_query_len=verify.masks.shape[1]),
            "torch_reference": functools.partial(through, verify, naive_tree_paged_attention, args),
            "sdpa_dense_mask": functools.partial(verify.dense, *args),
        }
        times = {name: bench(fn, cuda) for name, fn in fns.items()}
        kv_rows = trees * (plan.verify_context + rows_per_tree)  # K and V, 2 bytes each
        nbytes = kv_rows * kv_heads * head_dim * 2 * 2 + 2 * case["q"].nbytes
        shape = f"{layout}, {trees} x ({plan.verify_context} context + {rows_per_tree} rows), bf16"
        rows.append(speed_row("tree verification", shape, times, nbytes, peak))
    return {"rows": rows}


# ---------------------------------------------------------------------- draft step, compressor


def graphed(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` captured in a CUDA graph after a warm-up on a side stream: its replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def decode_step(
    draft: Any,
    tokens: torch.Tensor,
    hidden: torch.Tensor,
    g: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One draft step of the reference draft's layer: a new row per request (token [B], target
    or own hidden state [B, H], global image feature [B, H]) attending over a KV cache
    [B, nkv, L + 1, hd] whose last slot it fills -> drafted tokens, output hidden states.
    ViSpec and EAGLE differ in ``text_inputs`` alone (img_fc)."""
    rope_cos_sin = tool("reference").rope_cos_sin
    layer, cfg = draft.layers[0], draft.config
    x = draft.text_inputs(tokens, hidden, g)[:, None]
    pos = torch.full_like(tokens, k_cache.shape[2] - 1)[:, None]
    cos, sin = rope_cos_sin(pos, cfg.head_dim, cfg.rope_theta, x.dtype)
    attn = layer.self_attn
    q, k, v = attn.qkv(x if layer.input_layernorm is None else layer.input_layernorm(x), cos, sin)
    k_cache[:, :, -1:] = k
    v_cache[:, :, -1:] = v
    out = F.scaled_dot_product_attention(
        q, k_cache, v_cache, enable_gqa=attn.num_kv_heads != attn.num_heads
    )
    x = x + attn.o_proj(out.transpose(1, 2).flatten(2))
    x = x + layer.mlp(layer.post_attention_layernorm(x))
    out = (x if draft.norm is None else draft.norm(x))[:, 0]
    return draft.logits(out).argmax(-1), out


def step_inputs(draft: Any, batch: int, context: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random tokens, hidden states, global features and a KV cache of ``context`` rows."""
    cfg, device = draft.config, draft.lm_head_weight.device
    dtype, h = draft.lm_head_weight.dtype, cfg.hidden_size
    gen = torch.Generator(device=device).manual_seed(seed)
    tokens = torch.randint(cfg.vocab_size, (batch,), device=device, generator=gen)
    hidden, g = (torch.randn(batch, h, device=device, generator=gen, dtype=dtype) for _ in range(2))
    shape = (batch, cfg.num_key_value_heads, context + 1, cfg.head_dim)
    caches = (torch.randn(shape, device=device, generator=gen, dtype=dtype) for _ in range(2))
    return tokens, hidden, g, *caches


def step_matches_reference(draft: Any, context: int) -> dict:
    """The cached step against the reference draft recomputing the whole sequence (the cache
    filled from random context rows through the same layer)."""
    rope_cos_sin = tool("reference").rope_cos_sin
    layer, cfg = draft.layers[0], draft.config
    tokens, hidden, g, k_cache, v_cache = step_inputs(draft, 2, context, seed=1)
    rows = torch.randn(2, context, cfg.hidden_size, device=hidden.device, dtype=hidden.dtype)
    pos = torch.arange(context + 1, device=hidden.device).expand(2, -1)
    cos, sin = rope_cos_sin(pos[:, :-1], cfg.head_dim, cfg.rope_theta, rows.dtype)
    a = rows if layer.input_layernorm is None else layer.input_layernorm(rows)
    _, k, v = layer.self_attn.qkv(a, cos, sin)
    k_cache[:, :, :-1], v_cache[:, :, :-1] = k, v
    _, out = decode_step(draft, tokens, hidden, g, k_cache, v_cache)
    new = draft.text_inputs(tokens, hidden, g)[:, None]
    ref = draft.decode(torch.cat([rows, new], dim=1), pos)[:, -1]
    return compare(out, ref, CHECK_TOLERANCE[hidden.dtype])


@torch.no_grad()
def draft_step(plan: Plan, device: torch.device, _peak: float | None) -> dict:
    """ViSpec's decode step against an EAGLE layer of the same size (the same decoder layer
    without img_fc), bf16, CUDA graphs on a GPU (eager on CPU); also ViSpec over its own
    shorter context (one image's positions unseen)."""
    reference = tool("reference")
    dtype, cfg = torch.bfloat16, plan.draft
    h = cfg["hidden_size"]
    lm_head = (torch.randn(cfg["vocab_size"], h, device=device) * h**-0.5).to(dtype)
    with torch.device(device):
        vispec = reference.ViSpecDraft(ViSpecConfig(**cfg), lm_head).to(dtype).eval()
        eagle = reference.ViSpecDraft(ViSpecConfig(**cfg, kind="eaglevlm"), lm_head).to(dtype)
    eagle.eval()
    eagle.embed_tokens = vispec.embed_tokens  # one copy of the vocabulary's embeddings
    check = step_matches_reference(vispec, plan.step_context)
    cuda, rows = device.type == "cuda", []
    hidden_context = plan.step_context - plan.image_tokens + 1
    variants = (
        ("eagle", eagle, plan.step_context),
        ("vispec", vispec, plan.step_context),
        ("vispec, image hidden", vispec, hidden_context),
    )
    for batch in plan.step_batches:
        times = {}
        for name, draft, context in variants:
            step = functools.partial(decode_step, draft, *step_inputs(draft, batch, context))
            times[name] = bench(graphed(step) if cuda else step, cuda)
        rows.append(
            {
                "batch": batch,
                "context": plan.step_context,
                "ms": times,
                "vispec_over_eagle": times["vispec"] / times["eagle"],
                "vispec_image_hidden_over_eagle": times["vispec, image hidden"] / times["eagle"],
            }
        )
    return {
        "cuda_graph": cuda,
        "dtype": "bfloat16",
        "draft": cfg,
        "hidden_context": hidden_context,
        "rows": rows,
        "reference_check": check,
        "passed": check["passed"],
    }


@torch.no_grad()
def compressor(plan: Plan, device: torch.device, _peak: float | None) -> dict:
    """Prefill time per image of each SpecVLM primitive and the gate's choice, against ViSpec's
    adaptor (Triton, queries absorbed) and the reference draft's (projections + SDPA)."""
    reference = tool("reference")
    dtype, n = torch.bfloat16, plan.image_tokens
    h = plan.draft["hidden_size"]
    with torch.device(device):
        specvlm = ElasticCompressor(ViSpecConfig(**plan.draft, kind="specvlm")).to(dtype)
        adaptor = reference.VisionAdaptor(ViSpecConfig(**plan.draft)).to(dtype)
    image = torch.randn(n, h, device=device, dtype=dtype)
    text = torch.randn(64, h, device=device, dtype=dtype)
    fns = {c: functools.partial(specvlm, image, c) for c in specvlm.choices}
    fns["gate"] = functools.partial(specvlm.choose, image, text)
    w = absorb_queries(adaptor.q, adaptor.k_proj.weight)
    fns["vispec adaptor (triton)"] = functools.partial(
        vision_adaptor,
        image,
        torch.tensor([0, n], device=device),
        w,
        adaptor.v_proj.weight,
        adaptor.o_proj.weight,
        adaptor.v_proj.bias,
        max_seqlen=n,
        use_triton=True,
    )
    fns["vispec adaptor (reference)"] = functools.partial(adaptor, image)
    rows = [
        {
            "primitive": name,
            "tokens_out": specvlm.num_tokens(n, name) if name in specvlm.choices else None,
            "ms": bench(fn, device.type == "cuda"),
        }
        for name, fn in fns.items()
    ]
    return {"image_tokens": n, "hidden": h, "dtype": "bfloat16", "rows": rows}


# ---------------------------------------------------------------------------------- training


def training(plan: Plan, device: torch.device, _peak: float | None) -> dict:
    """A few bf16 steps of the specvlm recipe (ViSpec draft) on a tiny Qwen2.5-VL target and
    toy-world data, through the trainer itself (accelerate; the GPU when there is one)."""
    trainer, losses_module = tool("trainer"), tool("losses")
    work = pathlib.Path(tempfile.mkdtemp(prefix="gpu-check-train-"))
    try:
        target = tool("tiny_targets").build_tiny_qwen2_5_vl(work / "target")
        data = work / "data" / "llava.json"
        records = tool("toy_world").make_samples(8, seed=7, image_dir=data.parent, size=112)
        data.write_text(json.dumps(records))
        cfg = trainer.TrainConfig(
            target=target,
            data=[data],
            image_root=data.parent,
            out=work / "out",
            recipe="specvlm",
            weights=losses_module.RECIPES["specvlm"],
            dtype="bfloat16",
            batch_size=plan.train_batch,
            lr=5e-3,
            max_steps=plan.train_steps,
            noise=0.0,
            quiet=True,
        )
        start = time.perf_counter()
        trainer.train(cfg)
        seconds = time.perf_counter() - start
        log = (cfg.out / trainer.LOG_FILE).read_text().splitlines()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    losses = [json.loads(line)["loss"] for line in log]
    k = max(1, len(losses) // 4)
    finite = all(math.isfinite(x) for x in losses)
    falling = statistics.mean(losses[-k:]) < statistics.mean(losses[:k])
    return {
        "recipe": "specvlm",
        "draft": cfg.draft,
        "dtype": "bfloat16",
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "steps": len(losses),
        "train_seconds": seconds,
        "losses": losses,
        "finite": finite,
        "falling": falling,
        "passed": finite and falling,
    }


# ------------------------------------------------------------------------------ environment


def imports(_plan: Plan, _device: torch.device, _peak: float | None) -> dict:
    """The tooling modules import with ``import vllm`` failing (the kernels already did)."""
    modules = {}
    for path in TOOLING.values():
        try:
            importlib.import_module(path)
            modules[path] = "ok"
        except Exception as e:
            modules[path] = f"{type(e).__name__}: {e}"
    return {
        "vllm_installed": VLLM_INSTALLED,
        "vllm_blocked": sys.modules.get("vllm", 0) is None,
        "modules": modules,
        "passed": all(v == "ok" for v in modules.values()),
    }


def peak_hbm(name: str | None) -> float | None:
    """The vendor's peak HBM bandwidth (TB/s) of a device named ``name``; None if unknown."""
    return next((tbps for key, tbps in PEAK_HBM_TBPS if name and key in name), None)


def nvidia_smi() -> str | None:
    """Name, driver and memory as nvidia-smi reports them; None without it."""
    query = ["--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    try:
        out = subprocess.run(["nvidia-smi", *query], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment(cuda: bool, peak: float | None) -> dict:
    """The machine, versions and where the code under test was imported from."""
    import triton

    info = machine()
    info.update(
        triton=triton.__version__,
        triton_interpreter=os.environ.get("TRITON_INTERPRET") == "1",
        nvidia_smi=nvidia_smi() if cuda else None,
        peak_hbm_tbps=peak,
        peak_hbm_source="vendor figure by device name: H100 SXM 3.35, H100 PCIe 2.0, H200 4.8 TB/s"
        if peak
        else "unknown device: no share of peak reported",
        vllm_vispec=str(pathlib.Path(vllm_vispec.__file__).parent),
        kernels=str(pathlib.Path(vllm_vispec.kernels.__file__).parent),
    )
    return info


def run_part(fn: Callable[..., dict], *args: Any) -> dict:
    """``fn(*args)`` with its time; an exception becomes the part's recorded failure."""
    start = time.perf_counter()
    try:
        result = {"ok": True, **fn(*args)}
    except Exception:
        result = {"ok": False, "error": traceback.format_exc()}
    result["seconds"] = time.perf_counter() - start
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


# ---------------------------------------------------------------------------------- reports


def _ms(times: dict[str, float], fast: str | None = None) -> str:
    base = times[fast] if fast else None
    return ", ".join(
        f"{k} {v:.4g}" + (f" ({v / base:.2f}x)" if base and k != fast else "")
        for k, v in times.items()
    )


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def goals(result: dict) -> list[str]:
    """The issue's goals (reported, not asserted) against what was measured."""
    parts, lines = result["parts"], []
    if result["plan"] == "tiny":
        return ["tiny run on CPU: speed goals are GPU goals, not judged here"]
    for part, kernel in (("adaptor_speed", "adaptor"), ("attention_speed", "draft attention")):
        for r in parts.get(part, {}).get("rows", []):
            if r["kernel"] == kernel:
                share = r["hbm_fraction"]
                verdict = "met" if share is not None and share >= 0.7 else "not met"
                lines.append(
                    f"{kernel} >= 70% of peak HBM ({r['shape']}): {_pct(share)}, {verdict}"
                )
    for r in parts.get("verify_speed", {}).get("rows", []):
        ratio = r["slower_than_triton"]["sdpa_dense_mask"]
        lines.append(
            f"tree verification faster than dense-mask SDPA ({r['shape']}): SDPA / "
            f"Triton {ratio:.2f}x, {'met' if ratio > 1 else 'not met'}"
        )
    for r in parts.get("draft_step", {}).get("rows", []):
        ratio = r["vispec_over_eagle"]
        lines.append(
            f"draft step ViSpec / EAGLE <= 1.10 (batch {r['batch']}): {ratio:.3f}, "
            f"{'met' if ratio <= 1.1 else 'not met'}"
        )
    return lines


def write_markdown(path: pathlib.Path, result: dict) -> None:
    """gpu_check.md: the tables a reader needs; gpu_check.json keeps everything else."""
    env, parts = result["environment"], result["parts"]
    lines = [
        "# GPU check",
        "",
        f"{result['date']}, `{result['command']}`",
        "",
        f"Device: {env['gpu'] or 'none (CPU)'}; nvidia-smi: {env['nvidia_smi'] or 'n/a'}; "
        f"torch {env['torch']}, Triton {env['triton']}"
        f"{' (interpreter)' if env['triton_interpreter'] else ''}, Python {env['python']}; "
        f"peak HBM used: {env['peak_hbm_tbps'] or 'n/a'} TB/s ({env['peak_hbm_source']}).",
        f"vLLM installed: {result['vllm_installed']}; blocked (`import vllm` fails) for the "
        "whole run.",
        "",
        "| part | ran | seconds | passed |",
        "|---|---|---|---|",
    ]
    for name, part in parts.items():
        lines.append(
            f"| {name} | {'yes' if part['ok'] else '**failed**'} | "
            f"{part['seconds']:.1f} | {part.get('passed', '')} |"
        )
    lines += ["", "## Goals (reported, not asserted)", ""] + [f"- {g}" for g in result["goals"]]
    if "correctness" in parts and parts["correctness"]["ok"]:
        lines += [
            "",
            "## Correctness",
            "",
            "Error: max |kernel - float64 reference|; passed when it is within the tolerance "
            "times max(1, |reference|). Tolerances (the kernels' start-up checks' bounds): "
            + ", ".join(
                f"{str(d).removeprefix('torch.')} {t:g}" for d, t in CHECK_TOLERANCE.items()
            )
            + "; 0 for compaction (bit-exact).",
            "",
            "| kernel | layout | dtype | block | max abs err | rel err | tolerance | passed |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in parts["correctness"]["cases"]:
            err = (
                f"{c['max_abs_err']:.3g} | {c['rel_err']:.3g} | {c['tolerance']:g}"
                if "rel_err" in c
                else "error | | "
            )
            lines.append(
                f"| {c['kernel']} | {c['layout']} | {c['dtype']} | "
                f"{c['block_size'] or ''} | {err} | {c['passed']} |"
            )
    speed = [
        r
        for p in ("adaptor_speed", "attention_speed", "verify_speed")
        for r in parts.get(p, {}).get("rows", [])
    ]
    if speed:
        lines += [
            "",
            "## Speed",
            "",
            "Median ms (do_bench on a GPU, warm, L2 flushed; CPU wall time with --tiny), the "
            "others' ratio to Triton's; bytes are the least the kernel must move (visible KV, "
            "the image once, the weights it reads), over Triton's time.",
            "",
            "| kernel | shape | ms | MB | TB/s | of peak |",
            "|---|---|---|---|---|---|",
        ]
        for r in speed:
            lines.append(
                f"| {r['kernel']} | {r['shape']} | {_ms(r['ms'], 'triton')} | "
                f"{r['bytes'] / 1e6:.1f} | {r['tbps']:.3g} | "
                f"{_pct(r['hbm_fraction'])} |"
            )
    step = parts.get("draft_step", {})
    if step.get("ok"):
        lines += [
            "",
            "## Draft decode step",
            "",
            f"Reference draft at hidden {step['draft']['hidden_size']}, bf16, "
            f"{'CUDA graphs' if step['cuda_graph'] else 'eager (no CUDA)'}; context "
            f"{step['rows'][0]['context']} rows ('image hidden': {step['hidden_context']}); "
            f"the step equals the reference's full recompute within "
            f"{step['reference_check']['rel_err']:.3g} (passed: {step['passed']}).",
            "",
            "| batch | ms | ViSpec / EAGLE | ViSpec, image hidden / EAGLE |",
            "|---|---|---|---|",
        ]
        for r in step["rows"]:
            lines.append(
                f"| {r['batch']} | {_ms(r['ms'])} | {r['vispec_over_eagle']:.3f} | "
                f"{r['vispec_image_hidden_over_eagle']:.3f} |"
            )
    comp = parts.get("compressor", {})
    if comp.get("ok"):
        lines += [
            "",
            f"## Compressor prefill per {comp['image_tokens']}-token image "
            f"(hidden {comp['hidden']}, bf16)",
            "",
            "| primitive | tokens out | ms |",
            "|---|---|---|",
        ]
        for r in comp["rows"]:
            lines.append(f"| {r['primitive']} | {r['tokens_out'] or ''} | {r['ms']:.4g} |")
    train = parts.get("training", {})
    if train.get("ok"):
        losses = ", ".join(f"{x:.4f}" for x in train["losses"])
        lines += [
            "",
            "## Training",
            "",
            f"{train['steps']} steps of the {train['recipe']} recipe ({train['draft']} draft, "
            f"{train['dtype']}, {train['device']}) in {train['train_seconds']:.1f} s; finite: "
            f"{train['finite']}, falling: {train['falling']}. Losses: {losses}.",
        ]
    failures = {n: p["error"].strip().splitlines()[-1] for n, p in parts.items() if not p["ok"]}
    if failures:
        lines += ["", "## Failed parts (tracebacks in gpu_check.json)", ""]
        lines += [f"- {name}: `{last}`" for name, last in failures.items()]
    path.write_text("\n".join(lines) + "\n")


def plot(path: pathlib.Path, result: dict) -> None:
    """Correctness margins, speed, draft step and training loss, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = result["parts"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 8))
    ax = axes[0][0]
    cases = [c for c in parts.get("correctness", {}).get("cases", []) if "rel_err" in c]
    for i, kernel in enumerate(dict.fromkeys(c["kernel"] for c in cases)):
        ours = [(j, c) for j, c in enumerate(cases) if c["kernel"] == kernel]
        ratio = [
            max(c["rel_err"] / c["tolerance"], 1e-6) if c["tolerance"] else 1e-6 for _, c in ours
        ]
        ax.scatter([j for j, _ in ours], ratio, s=12, color=f"C{i}", label=kernel)
    ax.axhline(1, color="red", lw=0.8)
    ax.set(
        yscale="log", title="correctness: error / tolerance (below the line passes)", xlabel="case"
    )
    if cases:
        ax.legend(fontsize=7)
    ax = axes[0][1]
    speed = [
        r
        for p in ("adaptor_speed", "attention_speed", "verify_speed")
        for r in parts.get(p, {}).get("rows", [])
    ]
    labels = []
    for i, r in enumerate(speed):
        for j, (name, ms) in enumerate(r["ms"].items()):
            ax.barh(i + 0.18 * j - 0.3, ms, height=0.16, color=f"C{j}")
            ax.text(ms, i + 0.18 * j - 0.3, f" {name}", va="center", fontsize=5)
        labels.append(f"{r['kernel']}\n{r['shape'][:40]}")
    ax.set_yticks(range(len(speed)), labels, fontsize=5)
    ax.set(xscale="log", title="speed (ms, median)")
    ax = axes[1][0]
    for r in parts.get("draft_step", {}).get("rows", []):
        ax.bar([f"{k}\nbatch {r['batch']}" for k in r["ms"]], list(r["ms"].values()))
    ax.set(title="draft decode step (ms)")
    ax.tick_params(axis="x", labelsize=6)
    ax = axes[1][1]
    losses = parts.get("training", {}).get("losses", [])
    ax.plot(range(1, len(losses) + 1), losses, "o-")
    ax.set(title="training loss (specvlm recipe, bf16)", xlabel="step")
    env = result["environment"]
    fig.suptitle(
        f"GPU check: {env['gpu'] or 'CPU, tiny'}, torch {env['torch']}, Triton {env['triton']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -------------------------------------------------------------------------------------- main

PARTS: dict[str, Callable[[Plan, torch.device, float | None], dict]] = {
    "imports": imports,
    "correctness": correctness,
    "adaptor_speed": adaptor_speed,
    "attention_speed": attention_speed,
    "verify_speed": verify_speed,
    "draft_step": draft_step,
    "compressor": compressor,
    "training": training,
}


def main() -> int:
    args = parse_args()
    cuda = torch.cuda.is_available() and not args.tiny
    if not cuda and not args.tiny:
        print("needs a CUDA GPU (or --tiny: tiny shapes on CPU through Triton's interpreter)")
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    plan = TINY if args.tiny else GPU
    if args.tiny:  # tiny work gains nothing from threads, which the test suite's workers share
        torch.set_num_threads(1)
    peak = peak_hbm(torch.cuda.get_device_name() if cuda else None)
    result = {
        "command": "python " + shlex.join([os.path.relpath(sys.argv[0]), *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "plan": "tiny" if args.tiny else "gpu",
        "vllm_installed": VLLM_INSTALLED,
        "environment": environment(cuda, peak),
        "parts": {},
    }
    for name in args.parts:
        print(f"== {name}", flush=True)
        part = result["parts"][name] = run_part(PARTS[name], plan, device, peak)
        print(f"   {'ok' if part['ok'] else 'FAILED'} in {part['seconds']:.1f} s", flush=True)
        if not part["ok"]:
            print(part["error"], flush=True)
    result["goals"] = goals(result)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        plot(args.out / "gpu_check.png", result)
        result["png"] = "gpu_check.png"
    except Exception:  # no matplotlib, or a figure it cannot draw: the numbers still count
        result["png"] = "skipped: " + traceback.format_exc().strip().splitlines()[-1]
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(args.out / "gpu_check.md", result)
    print(f"wrote gpu_check.json, gpu_check.md into {args.out}; png: {result['png']}")
    print("\n".join(result["goals"]))
    good = all(p["ok"] and p.get("passed", True) for p in result["parts"].values())
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
