"""The bench's offline mode: ``vllm.LLM`` in this process, a batch is one ``LLM.chat`` call.

A batch size is timed over waves of that many requests until every prompt has run once
(:func:`~vllm_vispec.tools.bench.prompts.waves`); its figures sum the waves' tokens and seconds.

One engine per method, reused across batch sizes; times come from vLLM's own per-request stats
and acceptance from the engine's metrics, so no client or server sits between the figures and
the engine.
"""

from __future__ import annotations

import argparse
import gc
import time
from typing import Any

from tqdm import tqdm

from vllm_vispec.tools.bench.prompts import Prompt, waves
from vllm_vispec.tools.bench.report import Answer, acceptance, row
from vllm_vispec.tools.bench.server import SPEC_COUNTERS, SPEC_PER_POS

WARMUP_TOKENS = 8
"""Output tokens of the warm-up, in both modes: every distinct prompt once, which also fills
the prefix cache (every timed request then starts from a cached prompt, for every method)."""


def measure(
    args: argparse.Namespace, method: str, kwargs: dict[str, Any], prompts: list[Prompt]
) -> list[dict[str, Any]]:
    """One vllm.LLM for every batch size; one row per batch size."""
    from vllm import LLM

    llm = LLM(model=str(args.target), **{**kwargs, "disable_log_stats": False})
    try:
        llm.chat([p.chat() for p in prompts], _sampling(args, WARMUP_TOKENS), use_tqdm=False)
        params = _sampling(args, args.max_tokens)
        rows = []
        for batch in args.batch_sizes:
            before = offline_counters(llm)
            answers, seconds = [], 0.0
            for wave in tqdm(waves(prompts, batch), desc=f"offline {method} batch {batch}"):
                start = time.monotonic()  # the engine core stamps tokens with the same clock
                outputs = llm.chat([p.chat() for p in wave], params, use_tqdm=False)
                seconds += time.monotonic() - start
                answers += [
                    Answer(
                        list(o.outputs[0].token_ids),
                        o.metrics.first_token_ts - start,
                        o.metrics.last_token_ts - start,
                    )
                    for o in outputs
                ]
            after = offline_counters(llm)
            spec = acceptance(before, after) if after else None
            rows.append(row("offline", method, batch, answers, seconds, spec))
        return rows
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()  # an in-process engine's weights go now, before the next method's load


def offline_counters(llm: Any) -> dict[str, Any]:
    """An in-process engine's vllm:spec_decode_* counters, under the short names of
    :data:`~vllm_vispec.tools.bench.server.SPEC_COUNTERS` and ``per_pos`` ({} without
    speculation)."""
    from vllm.v1.metrics.reader import Counter, Vector

    out: dict[str, Any] = {}
    for m in llm.get_metrics():
        if isinstance(m, Counter) and m.name in SPEC_COUNTERS:
            out[SPEC_COUNTERS[m.name]] = m.value
        elif isinstance(m, Vector) and m.name == SPEC_PER_POS:
            out["per_pos"] = list(m.values)
    return out


def model_runner(llm: Any) -> Any:
    """The model runner of an in-process engine (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, uni
    executor)."""
    core = llm.llm_engine.engine_core.engine_core
    return core.model_executor.driver_worker.worker.model_runner


def drafter(llm: Any) -> Any:
    """The proposer of an in-process engine (V1's drafter, V2's speculator)."""
    runner = model_runner(llm)
    return runner.drafter if hasattr(runner, "drafter") else runner.speculator


def timed_propose(llm: Any, times: list[float]) -> str:
    """Time every later ``propose`` call of an in-process engine's proposer into ``times``;
    returns the proposer's class name."""
    proposer = drafter(llm)
    propose = proposer.propose

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = propose(*args, **kwargs)
        times.append(time.perf_counter() - start)
        return out

    proposer.propose = timed
    return type(proposer).__name__


def _sampling(args: argparse.Namespace, max_tokens: int) -> Any:
    from vllm import SamplingParams

    return SamplingParams(
        temperature=args.temperature, max_tokens=max_tokens, ignore_eos=args.ignore_eos
    )
