"""``vllm-vispec demo``: ViSpec speculative decoding end to end, on this machine, no downloads.

Runs the toy world's trained target (a tiny Qwen2.5-VL that describes toy scenes, shipped in
models/toy/ of the repository) with and without its trained ViSpec draft in vLLM, on a few
held-out toy pictures and one real photo shipped with matplotlib, and prints each answer,
whether the two runs agree token for token, the acceptance figures and the measured speed
ratio. Without models/toy/ (an install from a wheel), it builds a random tiny target and draft
instead: the machinery and losslessness show, but not the speed-up a trained draft gives.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import time
from typing import Any

CACHE = (
    pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "vllm-vispec"
)
TOY_MODELS = pathlib.Path(__file__).resolve().parents[1] / "models" / "toy"
TOY_SEED = 20_000  # held out from the toy target's and drafts' training seeds


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo",
        help="run the toy target with its ViSpec draft through vLLM and compare with plain "
        "decoding",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--k", type=int, default=3, help="num_speculative_tokens (default 3)")
    parser.add_argument("--max-tokens", type=int, default=160, help="new tokens per answer")
    parser.add_argument("--images", type=int, default=4, help="toy pictures (default 4)")
    parser.add_argument(
        "--models",
        type=pathlib.Path,
        default=TOY_MODELS,
        help=f"folder with target/ and vispec/ (default {TOY_MODELS})",
    )
    parser.add_argument(
        "--cache",
        type=pathlib.Path,
        default=CACHE,
        help=f"where random tiny models are built when --models is absent (default {CACHE})",
    )
    parser.set_defaults(func=run)
    return parser


def _photo() -> Any:
    """A real photo that ships inside matplotlib (no download)."""
    import matplotlib.cbook
    from PIL import Image

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        return Image.open(f).convert("RGB").resize((224, 280))


def _conversations(n: int) -> list[tuple[str, list[dict]]]:
    from vllm_vispec.toy_world import prompts

    def chat(image: Any, text: str) -> list[dict]:
        parts = [{"type": "image_pil", "image_pil": image}, {"type": "text", "text": text}]
        return [{"role": "user", "content": parts}]

    named = [
        (f"toy picture {record['image']}", chat(image, question))
        for record, image, question in prompts(n, TOY_SEED)
    ]
    named.append(("photo grace_hopper.jpg", chat(_photo(), "Describe the image in detail.")))
    return named


def _models(args: argparse.Namespace) -> tuple[pathlib.Path, pathlib.Path, bool]:
    """(target, draft, trained): the shipped toy models, else random tiny ones (cached)."""
    target, draft = args.models / "target", args.models / "vispec"
    if (target / "config.json").exists() and (draft / "config.json").exists():
        return target, draft, True
    from vllm_vispec.tiny_drafts import build_tiny_draft
    from vllm_vispec.tiny_targets import build_tiny_qwen2_5_vl

    print(f"no trained toy models in {args.models}: using random tiny ones (low acceptance)")
    target, draft = args.cache / "tiny-qwen2_5_vl", args.cache / "tiny-qwen2_5_vl-vispec"
    if not (target / "config.json").exists():
        build_tiny_qwen2_5_vl(target)
    if not (draft / "config.json").exists():
        build_tiny_draft(target, draft, echo=True)
    return target, draft, False


def _run_engine(target: pathlib.Path, conversations: list, params: Any, spec: dict | None):
    from vllm import LLM

    from vllm_vispec.bench import offline_counters
    from vllm_vispec.tiny_targets import cpu_engine_kwargs

    extra = {"speculative_config": spec} if spec else {}
    llm = LLM(model=str(target), disable_log_stats=False, **cpu_engine_kwargs(**extra))
    llm.chat(conversations[:1], params, use_tqdm=False)  # warm-up
    before = offline_counters(llm)
    start = time.perf_counter()
    outputs = llm.chat(conversations, params, use_tqdm=True)
    seconds = time.perf_counter() - start
    after = offline_counters(llm)
    llm.llm_engine.engine_core.shutdown()
    return outputs, seconds, before, after


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import SamplingParams

    from vllm_vispec.bench import acceptance

    target, draft, trained = _models(args)
    named = _conversations(args.images)
    conversations = [c for _, c in named]
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens)
    spec = {"method": "eagle", "model": str(draft), "num_speculative_tokens": args.k}
    print(f"target {target}\ndraft  {draft}\n\nplain vLLM ...")
    plain, t_plain, _, _ = _run_engine(target, conversations, params, None)
    print(f"vLLM + ViSpec draft (K={args.k}) ...")
    fast, t_fast, before, after = _run_engine(target, conversations, params, spec)

    same = True
    for (name, _), a, b in zip(named, plain, fast, strict=True):
        equal = a.outputs[0].token_ids == b.outputs[0].token_ids
        same &= equal
        print(f"\n[{name}] identical to plain decoding: {equal}\n  {b.outputs[0].text[:300]!r}")
    acc = acceptance(before, after)
    per_pos = ", ".join(f"{p:.2f}" for p in acc["acceptance_per_pos"] or [])
    tokens = sum(len(o.outputs[0].token_ids) for o in plain)
    print(
        f"\nacceptance: {acc['accepted_tokens']}/{acc['draft_tokens']} draft tokens, mean "
        f"acceptance length {acc['mean_acceptance_length'] or 1:.2f} (per position: {per_pos})"
        f"{'' if trained else ' - random draft, expect ~1'}\n"
        f"time for {tokens} tokens: plain {t_plain:.2f} s, speculative {t_fast:.2f} s, "
        f"speedup {t_plain / t_fast:.2f}x (CPU, batch of {len(named)})\n"
        f"all answers identical: {same}"
    )
    return 0 if same else 1
