"""``vllm-vispec demo``: ViSpec speculative decoding end to end, on this machine, no downloads.

Runs the toy world's trained target (a tiny Qwen2.5-VL that describes toy scenes, shipped in
models/toy/ of the repository) with and without its trained ViSpec draft in vLLM, on a few
held-out toy pictures and one real photo shipped with matplotlib, one request at a time, and
prints each answer, whether the two runs agree token for token, the acceptance figures and the
measured speed ratio.

The target is made cost-realistic first: the trained toy target costs as much per token as its
draft, where a real 7B VLM costs 10-20x its ViSpec draft. The demo therefore runs the trained
target widened and deepened with work whose outputs are exactly zero (vllm_vispec.tools.toy.
costly_target; same tokens, built once into --cache). Without models/toy/ (an install from a
wheel), it builds a random tiny target and draft instead: the machinery and losslessness show,
but not the speed-up a trained draft gives. vLLM's own log goes to --cache/demo.log.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import pathlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

CACHE = (
    pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "vllm-vispec"
)
TOY_MODELS = pathlib.Path(__file__).resolve().parents[2] / "models" / "toy"
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
    from vllm_vispec.tools.toy.world import prompts

    def chat(image: Any, text: str) -> list[dict]:
        parts = [{"type": "image_pil", "image_pil": image}, {"type": "text", "text": text}]
        return [{"role": "user", "content": parts}]

    named = [
        (f"toy picture {record['image']}", chat(image, question))
        for record, image, question in prompts(n, TOY_SEED)
    ]
    named.append(("photo grace_hopper.jpg", chat(_photo(), "Describe the image in detail.")))
    return named


def _models(args: argparse.Namespace, say: Callable) -> tuple[pathlib.Path, pathlib.Path, bool]:
    """(target, draft, trained): the shipped toy models (the target made cost-realistic), else
    random tiny ones (cached)."""
    target, draft = args.models / "target", args.models / "vispec"
    if (target / "config.json").exists() and (draft / "config.json").exists():
        from vllm_vispec.tools.toy.costly_target import build_costly_target

        return build_costly_target(target, args.cache / "toy-costly-target"), draft, True
    from vllm_vispec.tools.testing.tiny_drafts import build_tiny_draft
    from vllm_vispec.tools.testing.tiny_targets import build_tiny_qwen2_5_vl

    say(f"no trained toy models in {args.models}: using random tiny ones (low acceptance)")
    target, draft = args.cache / "tiny-qwen2_5_vl", args.cache / "tiny-qwen2_5_vl-vispec"
    if not (target / "config.json").exists():
        build_tiny_qwen2_5_vl(target)
    if not (draft / "config.json").exists():
        build_tiny_draft(target, draft, echo=True)
    return target, draft, False


def _run_engine(
    target: pathlib.Path, conversations: list, params: Any, spec: dict | None, console: TextIO
):
    """Answers one request at a time (batch 1, where speculation pays most), timed."""
    from tqdm import tqdm
    from vllm import LLM

    from vllm_vispec.tools.bench.cpu_engine import cpu_engine_kwargs
    from vllm_vispec.tools.bench.offline import offline_counters

    extra = {"speculative_config": spec} if spec else {}
    llm = LLM(model=str(target), disable_log_stats=False, **cpu_engine_kwargs(**extra))
    llm.chat(conversations[:1], params, use_tqdm=False)  # warm-up
    before = offline_counters(llm)
    start = time.perf_counter()
    outputs = [
        llm.chat([c], params, use_tqdm=False)[0]
        for c in tqdm(conversations, desc="requests", unit="req", file=console)
    ]
    seconds = time.perf_counter() - start
    after = offline_counters(llm)
    llm.llm_engine.engine_core.shutdown()
    return outputs, seconds, before, after


@contextlib.contextmanager
def _engine_output_to(path: pathlib.Path) -> Iterator[TextIO]:
    """Send everything vLLM writes (its log goes to stdout, its engine process inherits both
    streams, C++ warnings go to stderr) to ``path``; yield the terminal for the demo's output."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    console = os.fdopen(os.dup(saved[0]), "w", buffering=1)
    with open(path, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield console
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            console.close()
            for fd, original in zip((1, 2), saved, strict=True):
                os.dup2(original, fd)
                os.close(original)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    log = args.cache / "demo.log"
    log.unlink(missing_ok=True)
    with _engine_output_to(log) as console:
        return _demo(args, log, functools.partial(print, file=console, flush=True), console)


def _demo(args: argparse.Namespace, log: pathlib.Path, say: Callable, console: TextIO) -> int:
    from vllm import SamplingParams

    from vllm_vispec.tools.bench.report import acceptance

    target, draft, trained = _models(args, say)
    named = _conversations(args.images)
    conversations = [c for _, c in named]
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens)
    spec = {"method": "eagle", "model": str(draft), "num_speculative_tokens": args.k}
    if trained:
        say(
            "target: the trained toy target, widened and deepened with work whose outputs are "
            "exactly zero\n        (same tokens; one draft step costs about 0.06 of a target "
            "step, as on a 7B VLM)"
        )
    say(f"target {target}\ndraft  {draft}\nvLLM's log: {log}\n\nplain vLLM ...")
    plain, t_plain, _, _ = _run_engine(target, conversations, params, None, console)
    say(f"vLLM + ViSpec draft (K={args.k}) ...")
    fast, t_fast, before, after = _run_engine(target, conversations, params, spec, console)

    same = True
    for (name, _), a, b in zip(named, plain, fast, strict=True):
        equal = a.outputs[0].token_ids == b.outputs[0].token_ids
        same &= equal
        say(f"\n[{name}] identical to plain decoding: {equal}\n  {b.outputs[0].text[:300]!r}")
    acc = acceptance(before, after)
    per_pos = ", ".join(f"{p:.2f}" for p in acc["acceptance_per_pos"] or [])
    tokens = sum(len(o.outputs[0].token_ids) for o in plain)
    say(
        f"\nacceptance: {acc['accepted_tokens']}/{acc['draft_tokens']} draft tokens, mean "
        f"acceptance length {acc['mean_acceptance_length'] or 1:.2f} (per position: {per_pos})"
        f"{'' if trained else ' - random draft, expect ~1'}\n"
        f"time for {tokens} tokens: plain {t_plain:.2f} s, speculative {t_fast:.2f} s, "
        f"speedup {t_plain / t_fast:.2f}x (CPU, {len(named)} requests one at a time)\n"
        f"all answers identical: {same}"
    )
    return 0 if same else 1
