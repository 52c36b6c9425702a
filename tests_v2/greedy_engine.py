"""One greedy vLLM engine, plain or with vLLM's own EAGLE-1 draft, over a text and an image prompt.

The same file serves both sides of the V1/V2 comparison: the V2 tests import it under vLLM 0.34,
and run it as a script under the 0.32 venv's Python for V1's tokens (a JSON file). It
imports nothing but vLLM, Pillow and the standard library, so that both engines get the same
settings and prompts whatever state the plugin's package is in. Engine settings follow
``vllm_vispec.tools.bench.cpu_engine.cpu_engine_kwargs`` (small, in-process, float32, eager).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process: starts in seconds

TURN = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
PROMPTS = {
    "text": TURN.format("Describe a sunny day in the park."),
    "image": TURN.format("<|vision_start|><|image_pad|><|vision_end|>Describe the picture."),
}


def engine_kwargs(target: str, draft: str | None = None, k: int = 3) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "model": target,
        "dtype": "float32",
        "block_size": 32,
        "kv_cache_memory_bytes": 256 * 1024**2,
        "max_model_len": 2048,
        "max_num_seqs": 8,
        "max_num_batched_tokens": 2048,
        "enforce_eager": True,
        "limit_mm_per_prompt": {"image": 1, "video": 0},
        "distributed_executor_backend": "uni",
        "seed": 0,
        "disable_log_stats": False,  # the spec-decode counters
    }
    if draft is not None:
        kwargs["speculative_config"] = {
            "method": "eagle",
            "model": draft,
            "num_speculative_tokens": k,
        }
    return kwargs


def _qualname(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _spec_counters(llm: Any) -> dict[str, Any]:
    """vLLM's spec-decode counters and per-position vectors (process-wide totals)."""
    out: dict[str, Any] = {}
    for metric in llm.get_metrics():
        if "spec_decode" in metric.name:
            value = getattr(metric, "value", None)
            out[metric.name] = list(metric.values) if value is None else value
    return out


def run(
    target: str, image: str, draft: str | None = None, k: int = 3, max_tokens: int = 24
) -> dict[str, Any]:
    """Greedy tokens for each prompt, the model runner's class (and its MRO), the draft's
    class and the spec-decode counters this engine added."""
    import vllm
    from PIL import Image
    from vllm import LLM, SamplingParams

    llm = LLM(**engine_kwargs(target, draft, k))
    try:
        runner = llm.llm_engine.engine_core.engine_core.model_executor.driver_worker.worker
        runner = runner.model_runner
        drafter = getattr(runner, "speculator", None) or getattr(runner, "drafter", None)
        before = _spec_counters(llm)
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        with Image.open(image) as picture:
            picture = picture.convert("RGB")
        tokens = {}
        for name, prompt in PROMPTS.items():
            request: dict[str, Any] = {"prompt": prompt}
            if name == "image":
                request["multi_modal_data"] = {"image": picture}
            (out,) = llm.generate([request], params, use_tqdm=False)
            tokens[name] = list(out.outputs[0].token_ids)
        after = _spec_counters(llm)
    finally:
        llm.llm_engine.engine_core.shutdown()
    return {
        "vllm": vllm.__version__,
        "runner": _qualname(runner),
        "runner_mro": [f"{c.__module__}.{c.__qualname__}" for c in type(runner).__mro__],
        "drafter": None if drafter is None else _qualname(drafter),
        "tokens": tokens,
        "spec": {name: _minus(value, before.get(name)) for name, value in after.items()},
    }


def _minus(after: Any, before: Any) -> Any:
    if before is None:
        return after
    if isinstance(after, list):
        return [a - b for a, b in zip(after, before, strict=True)]
    return after - before


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="model folder")
    parser.add_argument("--image", required=True, help="picture for the image prompt")
    parser.add_argument("--draft", help="vLLM EAGLE-1 draft folder: also run with it")
    parser.add_argument("--k", type=int, default=3, help="speculative tokens per step")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--out", required=True, help="JSON file to write (vLLM logs to stdout)")
    args = parser.parse_args(argv)
    results = {"plain": run(args.target, args.image, max_tokens=args.max_tokens)}
    if args.draft:
        results["eagle"] = run(args.target, args.image, args.draft, args.k, args.max_tokens)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(results, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
