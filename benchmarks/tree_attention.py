"""Time tree verification attention against vLLM's Triton attention at the same query tokens.

Every request verifies a tree of --nodes draft tokens (random parents) after its context, one
query row per node: ``tree_paged_attention`` (Triton, bit-masked nodes) against vLLM's
``unified_attention`` on the same paged cache with plain causal rows (what verifying a chain of
that many tokens costs). GPU times are medians of --repeats runs after a warm-up, measured with
CUDA events. Results go to benchmarks/results/tree_attention.{json,md}.

    python benchmarks/tree_attention.py
    python benchmarks/tree_attention.py --batch 4 --context 2048 --nodes 60
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import pathlib
import shlex
import statistics
import sys
from collections.abc import Callable
from functools import partial

import torch
from vllm_vispec.kernels import tree_paged_attention
from vllm_vispec.kernels.tree.selfcheck import ancestor_masks, random_parents, tree_case

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
WARMUP = 10
RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 4, 16], help="requests")
    parser.add_argument("--nodes", type=int, default=30, help="tree nodes per request (<= 64)")
    parser.add_argument("--context", nargs="+", type=int, default=[1024, 2048])
    parser.add_argument("--heads", type=int, default=28, help="query heads")
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--dtype", choices=list(DTYPES), default="bfloat16")
    parser.add_argument("--repeats", type=int, default=100, help="timed runs per case (median)")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS, help="folder for results")
    return parser.parse_args()


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median GPU time of ``fn`` after a warm-up (compiles, autotunes, fills caches)."""
    for _ in range(WARMUP):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def causal_call(case: dict, nodes: int, unified_attention: Callable) -> Callable[[], object]:
    """vLLM's Triton attention over the same cache: the rows as a causal chain after the context."""
    seq_lens = case["context_lens"] + nodes
    batch, num_kv_heads = len(seq_lens), case["k_cache"].shape[2]
    descale = torch.ones(1, device=seq_lens.device).expand(batch, num_kv_heads)
    max_seq_len, out = int(seq_lens.max()), torch.empty_like(case["q"])
    return lambda: unified_attention(
        q=case["q"], k=case["k_cache"], v=case["v_cache"], out=out,
        cu_seqlens_q=case["query_start_loc"], max_seqlen_q=nodes, seqused_k=seq_lens,
        max_seqlen_k=max_seq_len, softmax_scale=case["scale"], causal=True,
        window_size=(-1, -1), block_table=case["block_table"], softcap=0,
        q_descale=None, k_descale=descale, v_descale=descale,
    )  # fmt: skip


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def main() -> int:
    args = parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 2
    try:
        from vllm.v1.attention.ops.triton_unified_attention import unified_attention
    except ImportError as e:  # time the tree kernel alone
        print(f"no baseline: vLLM's unified_attention is not importable ({e})")
        unified_attention = None
    shape = {"num_heads": args.heads, "num_kv_heads": args.kv_heads, "head_dim": args.head_dim}
    rows = []
    for batch, context in itertools.product(args.batch, args.context):
        masks = [ancestor_masks(random_parents(args.nodes, seed=b)) for b in range(batch)]
        # Unwritten (NaN) slots among the nodes cost neither kernel anything.
        case = tree_case(
            [context] * batch, [args.nodes] * batch, masks, [[]] * batch, **shape,
            block_size=args.block_size, dtype=DTYPES[args.dtype], device="cuda",
        )  # fmt: skip
        tree_fn = partial(tree_paged_attention, **case, max_query_len=args.nodes)
        tree_ms = median_ms(tree_fn, args.repeats)
        causal_ms = None
        if unified_attention is not None:
            baseline = causal_call(case, args.nodes, unified_attention)
            causal_ms = median_ms(baseline, args.repeats)
        ratio = tree_ms / causal_ms if causal_ms else None
        rows.append(
            {"batch": batch, "context": context, "query_tokens": batch * args.nodes,
             "tree_ms": tree_ms, "causal_ms": causal_ms, "ratio": ratio}
        )  # fmt: skip
        print(rows[-1])
    result = {
        "device": torch.cuda.get_device_name(),
        "command": "python " + shlex.join([os.path.relpath(sys.argv[0]), *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": {k: str(v) for k, v in vars(args).items()},
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tree_attention.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Tree attention vs vLLM's Triton attention (causal rows, same query tokens and cache)\n",
        f"{result['device']}, {result['date']}, torch {torch.__version__}; "
        f"command: `{result['command']}`\n",
        f"{args.nodes} nodes (one row each) per request, heads {args.heads}/{args.kv_heads}, "
        f"head_dim {args.head_dim}, block size {args.block_size}, {args.dtype}; median of "
        f"{args.repeats} runs; ratio = tree / causal.\n",
        "| batch | context | query tokens | tree ms | causal ms | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [r["batch"], r["context"], r["query_tokens"]]
        cells += [_fmt(r[k]) for k in ("tree_ms", "causal_ms", "ratio")]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    (args.out / "tree_attention.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
