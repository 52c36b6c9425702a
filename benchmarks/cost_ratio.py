"""Cost of one ViSpec draft step against one target decode step, inside vLLM, on the toy models.

For the trained toy target and its cost-realistic copy (``vllm_vispec.tools.toy.costly_target``, the
same function with extra work vLLM really does), one request at a time:

* target step: a plain engine generates 1 and then 1 + N tokens for the same prompts;
  (t(1 + N) - t(1)) / N is the time of one decode step (scheduling, forward, sampling);
* draft step: an engine with the trained ViSpec draft (K per step) times every ``propose()``
  call (the first pass over the accepted tokens plus K - 1 single-token steps); its median / K.

Real targets: one draft step reads about 0.11 of Qwen2.5-VL-7B's parameters and 0.06 of
LLaVA-1.6-7B's; the goal for the toy is <= 0.1.

    python benchmarks/cost_ratio.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

TOY = pathlib.Path(__file__).resolve().parents[1] / "models" / "toy"
PROMPT_SEED = 10_000  # the bench's toy prompt set


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--k", type=int, default=3, help="num_speculative_tokens (default 3)")
    p.add_argument("--requests", type=int, default=4, help="prompts, one at a time (default 4)")
    p.add_argument("--tokens", type=int, default=64, help="decode steps timed per prompt")
    p.add_argument("--work", type=pathlib.Path, default=None, help="where the costly copy goes")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results"))
    return p.parse_args()


def _conversations(n: int) -> list[list[dict]]:
    from vllm_vispec.tools.toy.world import prompts

    return [
        [
            {
                "role": "user",
                "content": [
                    {"type": "image_pil", "image_pil": image},
                    {"type": "text", "text": question},
                ],
            }
        ]
        for _, image, question in prompts(n, PROMPT_SEED)
    ]


def _engine(target: pathlib.Path, spec: dict | None):
    from vllm import LLM

    from vllm_vispec.tools.bench.cpu_engine import cpu_engine_kwargs

    extra = {"speculative_config": spec} if spec else {}
    return LLM(model=str(target), **cpu_engine_kwargs(**extra))


def _shutdown(llm) -> None:
    llm.llm_engine.engine_core.shutdown()


def target_step_ms(target: pathlib.Path, conversations: list, tokens: int) -> float:
    from vllm import SamplingParams

    llm = _engine(target, None)
    llm.chat(conversations[:1], SamplingParams(max_tokens=4), use_tqdm=False)  # warm-up
    per_step = []
    for c in conversations:
        times = []
        for n in (1, 1 + tokens):
            params = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
            start = time.perf_counter()
            llm.chat([c], params, use_tqdm=False)
            times.append(time.perf_counter() - start)
        per_step.append((times[1] - times[0]) / tokens)
    _shutdown(llm)
    return 1e3 * statistics.median(per_step)


def draft_step_ms(target: pathlib.Path, conversations: list, tokens: int, k: int) -> float:
    from vllm import SamplingParams

    from vllm_vispec.tools.bench.offline import timed_propose

    spec = {"method": "eagle", "model": str(TOY / "vispec"), "num_speculative_tokens": k}
    llm = _engine(target, spec)
    params = SamplingParams(temperature=0, max_tokens=1 + tokens, ignore_eos=True)
    llm.chat(conversations[:1], params, use_tqdm=False)  # warm-up
    calls: list[float] = []
    timed_propose(llm, calls)
    for c in conversations:
        llm.chat([c], params, use_tqdm=False)
    _shutdown(llm)
    return 1e3 * statistics.median(calls) / k


def main() -> int:
    args = parse_args()
    from vllm_vispec.tools.toy.costly_target import build_costly_target

    work = args.work or pathlib.Path(tempfile.mkdtemp(prefix="vispec-cost-"))
    targets = {
        "trained toy target": TOY / "target",
        "cost-realistic copy": build_costly_target(TOY / "target", work / "costly-target"),
    }
    conversations = _conversations(args.requests)
    rows = []
    for name, path in targets.items():
        config = json.loads((path / "config.json").read_text())["text_config"]
        target_ms = target_step_ms(path, conversations, args.tokens)
        draft_ms = draft_step_ms(path, conversations, args.tokens, args.k)
        rows.append(
            {
                "target": name,
                "layers": config["num_hidden_layers"],
                "intermediate": config["intermediate_size"],
                "target_step_ms": target_ms,
                "draft_step_ms": draft_ms,
                "ratio": draft_ms / target_ms,
            }
        )
        print(f"{name}: target step {target_ms:.2f} ms, draft step {draft_ms:.2f} ms")
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    command = "python " + " ".join(sys.argv)
    record = {"k": args.k, "rows": rows, "machine": machine, "command": command}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cost_ratio.json").write_text(json.dumps(record, indent=2) + "\n")
    table = "\n".join(
        f"| {r['target']} | {r['layers']} | {r['intermediate']} | {r['target_step_ms']:.2f} | "
        f"{r['draft_step_ms']:.2f} | **{r['ratio']:.3f}** |"
        for r in rows
    )
    (args.out / "cost_ratio.md").write_text(
        f"""# One ViSpec draft step against one target decode step (toy models, in vLLM)

Machine: {machine} (vLLM CPU build, in-process engine, float32). Command: `{command}`
K={args.k}; {args.requests} held-out toy prompts, one at a time, {args.tokens} timed decode
steps each. Target step: (t(1 + N tokens) - t(1 token)) / N of a plain engine. Draft step:
median `propose()` time / K of an engine with the trained ViSpec draft.

| target | layers | MLP width | target step ms | draft step ms | draft / target |
|---|---|---|---|---|---|
{table}

The cost-realistic copy is the trained toy target plus work whose outputs are exactly zero
(MLPs widened with zero down-projection columns, layers appended with zero output projections),
so its tokens are the trained target's (`tests/test_costly_target.py`). Real targets, by
parameters read per step: 0.11 (Qwen2.5-VL-7B) and 0.06 (LLaVA-1.6-7B); goal <= 0.1.
"""
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
