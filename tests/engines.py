"""Helpers for tests that run real in-process vLLM engines on the tiny targets."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import pathlib
from collections.abc import Iterator
from typing import Any

from vllm import LLM, SamplingParams

from vllm_vispec.tools.bench.cpu_engine import cpu_engine_kwargs
from vllm_vispec.tools.bench.offline import model_runner
from vllm_vispec.tools.testing.tiny_targets import make_test_image

# Where plain_greedy keeps its results for the rest of the test run (set by conftest; shared by
# the run's xdist workers). None: nothing is kept.
BASELINE_DIR: pathlib.Path | None = None


@contextlib.contextmanager
def engine(
    target: pathlib.Path,
    draft: pathlib.Path | None = None,
    k: int = 3,
    vispec: dict[str, Any] | None = None,
    **overrides: Any,
) -> Iterator[LLM]:
    """An in-process engine, with the ViSpec draft when given (and its ``vispec`` settings,
    see :mod:`vllm_vispec.settings`); shut down on exit."""
    if draft is not None:
        overrides["speculative_config"] = {
            "method": "eagle",
            "model": str(draft),
            "num_speculative_tokens": k,
        }
    if vispec is not None:
        overrides["additional_config"] = {"vispec": vispec}
    settle_heap()
    llm = LLM(model=str(target), disable_log_stats=False, **cpu_engine_kwargs(**overrides))
    try:
        yield llm
    finally:
        # vLLM unfreezes the heap at shutdown (for a server's last collections) and collects it
        # whole, twice; here it stays frozen, and the next settle_heap() collects this engine.
        unfreeze, gc.unfreeze = gc.unfreeze, lambda: None
        try:
            llm.llm_engine.engine_core.shutdown()
        finally:
            gc.unfreeze = unfreeze


def settle_heap() -> None:
    """Collect all garbage once, then freeze what survives (torch, transformers, vLLM: some
    800k objects), so that the full collections vLLM runs at an engine's start and shutdown
    skip them: one collection an engine instead of seven (about 2.5 s an engine here)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def models(name: str, request: Any) -> tuple[pathlib.Path, pathlib.Path]:
    """The session fixtures of a case name: ``qwen`` -> (qwen_target, qwen_draft), and a
    variant ``qwen-eaglevlm`` -> (qwen_target, qwen_eaglevlm_draft)."""
    target = request.getfixturevalue(f"{name.partition('-')[0]}_target")
    return target, request.getfixturevalue(f"{name.replace('-', '_')}_draft")


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


def committed_kv(llm: LLM, draft: bool = False) -> tuple[int, list[Any]]:
    """Computed tokens of the engine's first live request and its K/V there, every target
    layer (``draft``: every draft layer instead)."""
    import torch
    from vllm_vispec.kernels import split_kv_cache

    core = llm.llm_engine.engine_core.engine_core
    (req_id, req), *_ = core.scheduler.requests.items()
    blocks = core.scheduler.kv_cache_manager.get_block_ids(req_id)[0]
    r = model_runner(llm)
    draft_layers = set(getattr(getattr(r, "drafter", None), "_draft_attn_layer_names", ()) or ())
    layers = r.compilation_config.static_forward_context
    out = []
    n = req.num_computed_tokens
    for name, layer in sorted(layers.items()):
        if not hasattr(layer, "kv_cache") or layer.kv_cache.numel() == 0:
            continue
        if (name in draft_layers) != draft:
            continue
        k, v = split_kv_cache(layer.kv_cache, getattr(layer, "isa", None))
        bs = k.shape[1]
        pos = torch.arange(n)
        phys = torch.tensor(blocks)[pos // bs]
        out += [k[phys, pos % bs].clone(), v[phys, pos % bs].clone()]
    return n, out


def chat(
    images: list[tuple[int, tuple[int, int]]], text: str = "Describe the picture in detail."
) -> list[dict]:
    """A one-turn chat with test images given as (seed, size)."""
    parts: list[dict] = [
        {"type": "image_pil", "image_pil": make_test_image(seed, size)} for seed, size in images
    ]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def toy_conversations(n: int) -> list[list[dict]]:
    """``n`` held-out toy-world chats (seed 30 000: pictures the trained toy models never saw)."""
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
        for _, image, question in prompts(n, 30_000)
    ]


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


def output_tokens(outputs: list[Any]) -> list[list[int]]:
    """The generated token ids of each completion (``n`` > 1 requests give several)."""
    return [list(c.token_ids) for o in outputs for c in o.outputs]


def plain_greedy(
    target: pathlib.Path,
    conversations: list[list[dict]],
    runs: int = 1,
    max_tokens: int = 48,
    **overrides: Any,
) -> list[list[list[int]]]:
    """vLLM's greedy tokens without speculation (``runs`` passes, one engine), computed once
    per test run for the same target content, prompts and engine settings: the baseline that
    many lossless tests compare with, whatever draft or draft attention they test."""
    key = hashlib.sha256(
        json.dumps(
            [_digest(target), conversations, runs, max_tokens, overrides],
            default=_image_digest,
            sort_keys=True,
        ).encode()
    ).hexdigest()
    path = BASELINE_DIR / f"{key}.json" if BASELINE_DIR is not None else None
    if path is not None and path.exists():
        return json.loads(path.read_text())
    with engine(target, **overrides) as llm:
        out = [greedy(llm, conversations, max_tokens) for _ in range(runs)]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{id(out)}.tmp")
        partial.write_text(json.dumps(out))
        partial.replace(path)  # atomic: another worker never reads half a file
    return out


def _digest(folder: pathlib.Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in pathlib.Path(folder).rglob("*") if p.is_file()):
        h.update(f.relative_to(folder).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _image_digest(obj: Any) -> str:
    """JSON stand-in for a PIL image in a conversation: its mode, size and pixels."""
    return f"{obj.mode}{obj.size}" + hashlib.sha256(obj.tobytes()).hexdigest()
