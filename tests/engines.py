"""Helpers for tests that run real in-process vLLM engines on the tiny targets."""

from __future__ import annotations

import contextlib
import gc
import pathlib
from collections.abc import Iterator
from typing import Any

from vllm import LLM, SamplingParams

from vllm_vispec.bench.cpu_engine import cpu_engine_kwargs
from vllm_vispec.testing.tiny_targets import make_test_image


@contextlib.contextmanager
def engine(
    target: pathlib.Path, draft: pathlib.Path | None = None, k: int = 3, **overrides: Any
) -> Iterator[LLM]:
    """An in-process engine, with the ViSpec draft when given; shut down on exit."""
    if draft is not None:
        overrides["speculative_config"] = {
            "method": "eagle",
            "model": str(draft),
            "num_speculative_tokens": k,
        }
    llm = LLM(model=str(target), disable_log_stats=False, **cpu_engine_kwargs(**overrides))
    try:
        yield llm
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()


def runner(llm: LLM) -> Any:
    """The model runner of an in-process engine (uni executor)."""
    core = llm.llm_engine.engine_core.engine_core
    return core.model_executor.driver_worker.worker.model_runner


def counters(llm: LLM) -> dict[str, Any]:
    """vLLM's counters and vectors by name (process-wide: compare before/after)."""
    from vllm.v1.metrics.reader import Counter, Vector

    out: dict[str, Any] = {}
    for m in llm.get_metrics():
        if isinstance(m, Counter):
            out[m.name] = m.value
        elif isinstance(m, Vector):
            out[m.name] = list(m.values)
    return out


def chat(
    images: list[tuple[int, tuple[int, int]]], text: str = "Describe the picture in detail."
) -> list[dict]:
    """A one-turn chat with test images given as (seed, size)."""
    parts: list[dict] = [
        {"type": "image_pil", "image_pil": make_test_image(seed, size)} for seed, size in images
    ]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


MIXED_BATCH = [
    chat([]),
    chat([(1, (224, 224))]),
    chat([(2, (224, 224)), (3, (320, 200))], "Compare the two pictures."),
    chat([(4, (320, 200))], "What shapes do you see?"),
]


def greedy(llm: LLM, conversations: list[list[dict]], max_tokens: int = 48) -> list[list[int]]:
    outs = llm.chat(
        conversations, SamplingParams(temperature=0, max_tokens=max_tokens), use_tqdm=False
    )
    return [list(o.outputs[0].token_ids) for o in outs]
