"""``vllm-vispec demo``: ViSpec speculative decoding end to end, on this machine, no downloads.

Builds (once, cached) a tiny random Qwen2.5-VL target and a tiny ViSpec draft for it, then runs
vLLM with and without the draft on a few synthetic pictures and one real photo shipped with
matplotlib, and prints each answer, whether the two runs agree token for token, the acceptance
figures and the measured speed ratio. The models are random, so the answers are gibberish and
acceptance is low: the demo shows the machinery (and losslessness), not a speed-up; trained
drafts are what make it fast.
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


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo",
        help="run a tiny target with a ViSpec draft through vLLM and compare with plain decoding",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--k", type=int, default=3, help="num_speculative_tokens (default 3)")
    parser.add_argument("--max-tokens", type=int, default=64, help="new tokens per answer")
    parser.add_argument(
        "--cache",
        type=pathlib.Path,
        default=CACHE,
        help=f"where the tiny models are built (default {CACHE})",
    )
    parser.set_defaults(func=run)
    return parser


def _photo() -> Any:
    """A real photo that ships inside matplotlib (no download)."""
    import matplotlib.cbook
    from PIL import Image

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        return Image.open(f).convert("RGB").resize((224, 280))


def _conversations() -> list[tuple[str, list[dict]]]:
    from vllm_vispec.tiny_targets import make_test_image

    def chat(images: list, text: str) -> list[dict]:
        parts = [{"type": "image_pil", "image_pil": im} for im in images]
        return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]

    return [
        ("synthetic picture", chat([make_test_image(1)], "Describe the picture in detail.")),
        (
            "two pictures",
            chat([make_test_image(2), make_test_image(3, (320, 200))], "Compare the two pictures."),
        ),
        ("photo (grace_hopper.jpg)", chat([_photo()], "Who is in this photo?")),
        ("text only", chat([], "Tell me a long story.")),
    ]


def _run_engine(target: pathlib.Path, conversations: list, params: Any, spec: dict | None):
    from vllm import LLM

    from vllm_vispec.tiny_targets import cpu_engine_kwargs

    extra = {"speculative_config": spec} if spec else {}
    llm = LLM(model=str(target), disable_log_stats=False, **cpu_engine_kwargs(**extra))
    llm.chat(conversations[:1], params, use_tqdm=False)  # warm-up
    start = time.perf_counter()
    outputs = llm.chat(conversations, params, use_tqdm=True)
    seconds = time.perf_counter() - start
    metrics = {m.name: getattr(m, "value", None) for m in llm.get_metrics()}
    llm.llm_engine.engine_core.shutdown()
    return outputs, seconds, metrics


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import SamplingParams

    from vllm_vispec.tiny_drafts import build_tiny_draft
    from vllm_vispec.tiny_targets import build_tiny_qwen2_5_vl

    target, draft = args.cache / "tiny-qwen2_5_vl", args.cache / "tiny-qwen2_5_vl-vispec"
    if not (target / "config.json").exists():
        print(f"building a tiny Qwen2.5-VL target in {target} ...")
        build_tiny_qwen2_5_vl(target)
    if not (draft / "config.json").exists():
        print(f"building a tiny ViSpec draft in {draft} ...")
        build_tiny_draft(target, draft, echo=True)
    named = _conversations()
    conversations = [c for _, c in named]
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    spec = {"method": "eagle", "model": str(draft), "num_speculative_tokens": args.k}
    print("plain vLLM ...")
    plain, t_plain, _ = _run_engine(target, conversations, params, None)
    print(f"vLLM + ViSpec draft (K={args.k}) ...")
    fast, t_fast, m = _run_engine(target, conversations, params, spec)

    same = True
    for (name, _), a, b in zip(named, plain, fast, strict=True):
        equal = a.outputs[0].token_ids == b.outputs[0].token_ids
        same &= equal
        print(f"\n[{name}] identical to plain decoding: {equal}\n  {b.outputs[0].text[:160]!r}")
    drafts = m.get("vllm:spec_decode_num_drafts") or 0
    drafted = m.get("vllm:spec_decode_num_draft_tokens") or 0
    accepted = m.get("vllm:spec_decode_num_accepted_tokens") or 0
    print(
        f"\nacceptance: {accepted}/{drafted} draft tokens, mean acceptance length "
        f"{1 + accepted / max(drafts, 1):.2f} (random tiny draft: expect ~1)\n"
        f"time: plain {t_plain:.2f} s, speculative {t_fast:.2f} s, "
        f"speed ratio {t_plain / t_fast:.2f}x\n"
        f"all answers identical: {same}"
    )
    return 0 if same else 1
