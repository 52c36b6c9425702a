"""Where a speculative engine that drafts nothing spends its time, against a plain engine.

Three in-process engines on the same target and prompts, alive together and run in turn,
each batch twice (interleaved across engines, the faster run kept): plain decoding; vLLM's
EAGLE-1 and the ViSpec draft, both with ``num_speculative_tokens_per_batch_size`` giving K = 0
at every batch size (so no step drafts). Every call of the runner's and the proposer's phases
is timed (wall time: CPU engines run synchronously), and the engine's output tokens/s is
measured; the table gives ms per target step for each phase, so the extra cost of a K = 0
engine shows where it sits.

    python -m vllm_vispec.tools.toy.costly_target models/grounded/target /tmp/grounded-costly
    python benchmarks/k0_profile.py --target /tmp/grounded-costly --batch-sizes 4 16
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import platform
import shlex
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

MODELS = pathlib.Path(__file__).resolve().parents[1] / "models" / "grounded"
RUNNER_PHASES = (
    "_update_states",
    "_execute_mm_encoder",
    "_prepare_inputs",
    "_model_forward",
    "_sample",
    "_bookkeeping_sync",
    "propose_draft_token_ids",
    "take_draft_token_ids",
)
PROPOSER_PHASES = ("propose", "_skip", "_extend", "prepare_next_token_ids_padded")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--target", type=pathlib.Path, required=True, help="the target model folder")
    p.add_argument("--vispec-draft", type=pathlib.Path, default=MODELS / "vispec")
    p.add_argument("--eagle-draft", type=pathlib.Path, default=MODELS / "eagle")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 16])
    p.add_argument("--max-tokens", type=int, default=48, help="new tokens per request")
    p.add_argument("--runs", type=int, default=2, help="runs per engine, interleaved (best kept)")
    p.add_argument(
        "--prefix-caching",
        action="store_true",
        help="keep vLLM's prefix caching on (later runs then hit the prompts' cached blocks); "
        "adds vispec-k0-keep-block, the ViSpec engine with disable_eagle_block_drop",
    )
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results"))
    return p.parse_args()


def timed(obj: Any, names: tuple[str, ...], totals: collections.Counter, prefix: str) -> None:
    """Wrap ``obj``'s methods ``names`` (those it has) to add their wall time to ``totals``."""
    for name in names:
        method = getattr(obj, name, None)
        if method is None:
            continue
        setattr(obj, name, _timer(method, totals, f"{prefix}{name}"))


def _timer(method: Callable, totals: collections.Counter, key: str) -> Callable:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            totals[key] += time.perf_counter() - start
            totals[f"calls:{key}"] += 1

    return wrapper


def engines(args: argparse.Namespace, max_seqs: int) -> dict[str, dict[str, Any]]:
    """Each method's extra engine arguments: K = 0 at every batch size for the drafts."""
    never = [[1, max_seqs, 0]]

    def spec(draft: pathlib.Path) -> dict[str, Any]:
        return {
            "method": "eagle",
            "model": str(draft),
            "num_speculative_tokens": 3,
            "num_speculative_tokens_per_batch_size": never,
        }

    out = {
        "plain": {},
        "eagle-k0": {"speculative_config": spec(args.eagle_draft)},
        "vispec-k0": {"speculative_config": spec(args.vispec_draft)},
    }
    if args.prefix_caching:
        # vLLM drops an EAGLE engine's trailing cached block on a prefix hit (to rewrite the
        # draft's KV there), which can re-run the vision encoder; this one keeps the block.
        keep = {**spec(args.vispec_draft), "disable_eagle_block_drop": True}
        out["vispec-k0-keep-block"] = {"speculative_config": keep}
    return out


def run(llm: Any, chats: list, params: Any) -> tuple[float, int, collections.Counter]:
    """One timed batch: seconds, output tokens and the phases' totals."""
    from vllm_vispec.tools.bench.offline import model_runner

    totals: collections.Counter = collections.Counter()
    runner = model_runner(llm)
    saved = {n: vars(runner).get(n) for n in RUNNER_PHASES}
    timed(runner, RUNNER_PHASES, totals, "runner.")
    drafter = getattr(runner, "drafter", None)
    if drafter is not None:
        saved_drafter = {n: vars(drafter).get(n) for n in PROPOSER_PHASES}
        timed(drafter, PROPOSER_PHASES, totals, "proposer.")
    start = time.perf_counter()
    outputs = llm.chat(chats, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    _restore(runner, saved)
    if drafter is not None:
        _restore(drafter, saved_drafter)
    return seconds, sum(len(o.outputs[0].token_ids) for o in outputs), totals


def _restore(obj: Any, saved: dict[str, Any]) -> None:
    for name, value in saved.items():
        if value is None:
            vars(obj).pop(name, None)
        else:
            setattr(obj, name, value)


def main() -> int:
    args = parse_args()
    from vllm import LLM, SamplingParams

    from vllm_vispec.tools.bench.cpu_engine import cpu_engine_kwargs
    from vllm_vispec.tools.bench.prompts import cycle, load_prompts

    max_seqs = max(args.batch_sizes)
    prompts = load_prompts("grounded", max_seqs)
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    llms = {
        method: LLM(
            **cpu_engine_kwargs(
                model=str(args.target),
                max_num_seqs=max_seqs,
                enable_prefix_caching=args.prefix_caching,
                **extra,
            )
        )
        for method, extra in engines(args, max_seqs).items()
    }
    for llm in llms.values():  # warm-up
        llm.chat([p.chat() for p in prompts[:2]], params, use_tqdm=False)
    results: dict[str, dict[int, dict[str, Any]]] = collections.defaultdict(dict)
    answers: dict[int, dict[str, list]] = collections.defaultdict(dict)
    for batch in args.batch_sizes:
        chats = [p.chat() for p in cycle(prompts, batch)]
        best: dict[str, tuple] = {}
        for _ in range(args.runs):  # interleaved: a slow minute hits every engine alike
            for method, llm in llms.items():
                seconds, tokens, totals = run(llm, chats, params)
                if method not in best or seconds < best[method][0]:
                    best[method] = (seconds, tokens, totals)
        for method, (seconds, tokens, totals) in best.items():
            steps = max(totals["calls:runner._model_forward"], 1)
            results[method][batch] = {
                "tokens_per_s": tokens / seconds,
                "ms_per_step": 1e3 * seconds / steps,
                "steps": steps,
                "phases_ms_per_step": {
                    k: 1e3 * v / steps for k, v in totals.items() if not k.startswith("calls:")
                },
            }
            outputs = llms[method].chat(chats, params, use_tqdm=False)
            answers[batch][method] = [o.outputs[0].token_ids for o in outputs]
    for llm in llms.values():
        llm.llm_engine.engine_core.shutdown()
    lossless = {b: len({json.dumps(list(map(list, a))) for a in m.values()}) == 1
                for b, m in answers.items()}  # fmt: skip
    write(args, results, lossless)
    return 0


def write(args: argparse.Namespace, results: dict, lossless: dict[int, bool]) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, vLLM CPU build, in-process engines"
    blob = {"command": command, "machine": machine, "results": results, "lossless": lossless}
    (args.out / "k0_profile.json").write_text(json.dumps(blob, indent=2) + "\n")
    methods = list(results)
    lines = [
        "# A speculative engine that drafts nothing (K = 0 at every batch size) against plain",
        "",
        f"Command: `{command}`. Machine: {machine}. Greedy, grounded-world prompts, best of "
        f"{args.runs} interleaved runs per engine and batch size (prefix caching "
        f"{'on' if args.prefix_caching else 'off'}). Every "
        f"method's tokens identical to plain decoding: {all(lossless.values())}.",
        "",
    ]
    for batch in args.batch_sizes:
        plain = results["plain"][batch]
        lines += [
            f"## Batch {batch}",
            "",
            "| | " + " | ".join(methods) + " |",
            "|---|" + "---|" * len(methods),
            "| tokens/s | "
            + " | ".join(f"{results[m][batch]['tokens_per_s']:.1f}" for m in methods)
            + " |",
            "| x plain | "
            + " | ".join(
                f"{results[m][batch]['tokens_per_s'] / plain['tokens_per_s']:.2f}" for m in methods
            )
            + " |",
            "| ms per step | "
            + " | ".join(f"{results[m][batch]['ms_per_step']:.2f}" for m in methods)
            + " |",
        ]
        phases = sorted({p for m in methods for p in results[m][batch]["phases_ms_per_step"]})
        for phase in phases:
            cells = [results[m][batch]["phases_ms_per_step"].get(phase) for m in methods]
            lines.append(
                f"| `{phase}` ms/step | "
                + " | ".join("" if c is None else f"{c:.2f}" for c in cells)
                + " |"
            )
        lines.append("")
    (args.out / "k0_profile.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
