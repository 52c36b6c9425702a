"""Where a speculative step's time goes, chains against trees, one request at a time.

For each configuration (the ``vispec.tree`` setting, JSON, and ``num_speculative_tokens``) an
in-process engine answers a toy world's held-out prompts one by one; timers around the
runner's target forward, the proposer's ``propose()`` and its tree expansion give milliseconds
per speculative step next to tokens/s and the acceptance length. It shows what a tree costs on
this machine: on a CPU the target's pass over a tree's tokens is compute-bound, on a GPU it
costs about what one token costs.

    python -m vllm_vispec.tools.toy.costly_target models/grounded/target /tmp/grounded-costly
    python benchmarks/tree_step.py --target /tmp/grounded-costly
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import pathlib
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ("false:4", '{"depth":3,"top_k":4}:12', "true:29")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--target", type=pathlib.Path, required=True, help="the (costly) target")
    p.add_argument("--draft", type=pathlib.Path, default=ROOT / "models" / "grounded" / "vispec")
    p.add_argument(
        "--configs",
        nargs="+",
        default=list(CONFIGS),
        metavar="TREE:K",
        help="the engine's vispec.tree setting (JSON: false, true or an object of tree "
        "settings; see vllm_vispec.tree.settings) and num_speculative_tokens ('false:4' is a "
        f"chain of 4; default {' '.join(CONFIGS)})",
    )
    p.add_argument("--world", default="grounded", help="bench prompt set: grounded or toy")
    p.add_argument("--prompts", type=int, default=8, help="held-out prompts (default 8)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args()
    args.configs = [_config(p, config) for config in args.configs]
    return args


def _config(p: argparse.ArgumentParser, config: str) -> tuple[Any, int]:
    """A ``TREE:K`` of --configs as (the vispec.tree value, num_speculative_tokens)."""
    tree, _, k = config.rpartition(":")
    try:
        return json.loads(tree), int(k)
    except ValueError:
        p.error(f"--configs {config!r}: expected TREE:K, TREE as JSON (e.g. {CONFIGS[1]!r})")


def _timed(obj: Any, name: str, totals: dict[str, float], label: str) -> None:
    """Wrap obj.name so that its wall time adds up in totals[label]."""
    fn: Callable[..., Any] = getattr(obj, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[label] += time.perf_counter() - start

    setattr(obj, name, timed)


def measure(args: argparse.Namespace, tree: Any, k: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "tests"))
    from engines import counters, engine, runner
    from vllm import SamplingParams

    from vllm_vispec.settings import SETTINGS_KEY
    from vllm_vispec.tools.bench.prompts import load_prompts

    chats = [p.chat() for p in load_prompts(args.world, args.prompts)]
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens)
    totals: dict[str, float] = collections.defaultdict(float)
    vispec = {"tree": tree}
    with engine(args.target, args.draft, k=k, additional_config={SETTINGS_KEY: vispec}) as llm:
        for _ in range(2):  # warm-up: compilation, caches
            llm.chat(chats[:2], SamplingParams(max_tokens=16), use_tqdm=False)
        model_runner = runner(llm)
        _timed(model_runner, "_model_forward", totals, "target forward")
        _timed(model_runner.drafter, "propose", totals, "propose")
        if tree is not False:
            _timed(model_runner.drafter, "_expand", totals, "tree expansion")
        before, tokens, start = counters(llm), 0, time.perf_counter()
        for chat in chats:
            out = llm.chat([chat], params, use_tqdm=False)[0]
            tokens += len(out.outputs[0].token_ids)
        seconds, after = time.perf_counter() - start, counters(llm)
    drafts = after["vllm:spec_decode_num_drafts"] - before.get("vllm:spec_decode_num_drafts", 0)
    accepted = after["vllm:spec_decode_num_accepted_tokens"] - before.get(
        "vllm:spec_decode_num_accepted_tokens", 0
    )
    return {
        "tree": tree,
        "num_speculative_tokens": k,
        "tok_per_s": tokens / seconds,
        "acceptance_length": 1 + accepted / drafts,
        "ms_per_step": 1000 * seconds / drafts,
        **{f"{label} ms/step": 1000 * t / drafts for label, t in totals.items()},
    }


def _cell(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else json.dumps(value)


def main() -> int:
    args = parse_args()
    rows = []
    for tree, k in args.configs:
        rows.append(measure(args, tree, k))
        print(json.dumps(rows[-1]), flush=True)
    result = {
        "command": " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tree_step.json").write_text(json.dumps(result, indent=2) + "\n")
    columns = list(dict.fromkeys(c for r in rows for c in r))
    lines = [
        "# Chains against trees: where a speculative step's time goes",
        "",
        f"{result['machine']}; {result['date']}; `{result['command']}`",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for r in rows:
        cells = [_cell(r[c]) if c in r else "-" for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    (args.out / "tree_step.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
