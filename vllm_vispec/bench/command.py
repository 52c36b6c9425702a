"""``vllm-vispec bench``: end-to-end speed of ViSpec against plain decoding, ngram and EAGLE.

Runs one target on the same image + question prompts with every method in one go, so the figures
are comparable: no speculation (the baseline), vLLM's ngram prompt lookup, vLLM's EAGLE with a
plain EAGLE-1 draft (--eagle-draft) and the ViSpec draft (--vispec-draft), which also runs as
vispec-tree (EAGLE-2 trees of --tree-nodes nodes at every batch size, shaped by --tree) and
vispec-auto (the plugin's default policy: trees at small batches, chains of the tree settings'
`chain` length past their `tree_budget`). A method whose draft is not given is skipped
(--methods picks a subset). Each method runs at every batch size (the
number of concurrent requests) in two modes:

  offline  vllm.LLM in this process: one engine per method, reused across batch sizes; a batch
           is one LLM.chat call with that many prompts (max_num_seqs >= the largest batch).
  serve    a real `vllm serve` per method on 127.0.0.1; a batch is that many concurrent
           streaming chat completions through the openai client (images as base64 data URLs);
           acceptance is read from the server's Prometheus /metrics.

Every engine first answers all distinct prompts once (warm-up, which also fills the prefix
cache: every timed request then starts from a cached prompt, for every method alike). Figures
per method and batch size: output tokens/s (all output tokens / wall time of the batch), mean
time per output token (per request: (last token - first token) / (tokens - 1)), mean end-to-end
latency per request, speedup (tokens/s over no speculation's at the same batch size and mode),
mean acceptance length (1 + accepted / drafts) and acceptance rate per draft position
(accepted at position i / drafts; for trees position = depth; trailing zeros left out), both
from vLLM's vllm:spec_decode_* counters read before and after the timed batch, and "lossless":
whether every greedy answer is token-identical to no speculation's at the same batch size and
mode (n/a when --temperature > 0).

Prompt sets (--prompts):
  photos   real photos shipped with installed packages (no download): matplotlib's
           grace_hopper.jpg, asked for long, detailed, image-grounded answers.
  toy      held-out toy-world scenes (vllm_vispec.toy.world, seed 10000), one per request.
  grounded held-out strips of the image-grounded world (vllm_vispec.toy.grounded_world, seed
           10000, 256 image tokens each), one per request.
Prompts are cycled when a batch is larger than the set.

Writes to --out: bench.json (every figure, per-request timings, machine, versions, command,
date), bench.md (a table per mode), speedup.png, acceptance.png and, in serve mode, one
serve_<method>.log per server."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import functools
import gc
import io
import json
import logging
import os
import pathlib
import platform
import shlex
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from vllm_vispec.bench.server import SPEC_COUNTERS, SPEC_PER_POS, VllmServer, spec_decode_counters

EPILOG = """\
example:
  vllm-vispec bench --target Qwen2.5-VL-7B-Instruct --vispec-draft vispec-qwen7b \\
    --eagle-draft eagle-qwen7b --batch-sizes 1 4 16 --max-tokens 256 --out results/qwen7b"""

MODES = ("offline", "serve")
SPEC_METHODS = ("ngram", "eagle", "vispec", "vispec-tree", "vispec-auto")
# ViSpec with VLLM_VISPEC_TREE: trees at every batch size, or the default tree/chain policy.
TREE_METHODS = {"vispec-tree": "tree_budget=1000000", "vispec-auto": ""}
PROMPT_SETS = ("photos", "toy", "grounded")
BASELINE = "no-spec"
NGRAM = {"prompt_lookup_max": 4, "prompt_lookup_min": 2}
TOY_SEED = 10_000
WARMUP_TOKENS = 8
REQUEST_TIMEOUT_S = 1800.0

PHOTOS = ("grace_hopper.jpg",)
"""The photos found in this project's environment (matplotlib's sample data). The other images
installed packages ship are icons (Minduka_Present_Blue_Pack.png, logo2.png), diagrams
(vllm's disagg_prefill_workflow.jpg) or plot baselines (networkx tests), not photos."""

PHOTO_QUESTIONS = (
    "Describe this photo in as much detail as you can: the person, their clothing, the "
    "background, the lighting and the mood.",
    "Explain what this photo tells us about the person in it and the time it was taken. "
    "Point to the details in the image that support each statement.",
    "Write a long, detailed description of everything visible in this image, from the "
    "foreground to the background.",
    "What is the person in this photo wearing? Describe every item of clothing, insignia and "
    "accessory in detail, with colours and positions.",
)


class BenchError(Exception):
    """A user mistake: reported as one ``error:`` line, exit code 2."""


@functools.cache
def _logger() -> logging.Logger:
    """vLLM's logger, created on first use (``import vllm`` takes seconds; --help should not)."""
    from vllm.logger import init_logger

    return init_logger(f"vllm.{__name__}")


# --------------------------------------------------------------------------------------------
# Command line


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``bench`` subcommand."""
    parser = subparsers.add_parser(
        "bench",
        help="measure speed and acceptance of ViSpec vs no speculation, ngram and EAGLE",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--target", required=True, metavar="DIR", help="local folder of the target VLM"
    )
    parser.add_argument(
        "--vispec-draft", metavar="DIR", help="ViSpec draft folder (plugin format); else skipped"
    )
    parser.add_argument(
        "--eagle-draft",
        metavar="DIR",
        help="plain EAGLE-1 draft folder for vLLM's built-in EAGLE; else skipped",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        metavar="METHOD",
        help=f"speculative methods to compare with no speculation (which always runs): any of "
        f"{', '.join(SPEC_METHODS)} (default: ngram and every method whose draft is given)",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        default=list(MODES),
        metavar="MODE",
        help=f"any of {', '.join(MODES)} (default: both)",
    )
    parser.add_argument(
        "--batch-sizes",
        nargs="+",
        type=int,
        default=[1, 4, 16],
        metavar="N",
        help="concurrent requests per timed batch (default: 1 4 16)",
    )
    parser.add_argument(
        "--prompts",
        default="photos",
        metavar="SET",
        help=f"prompt set: {' or '.join(PROMPT_SETS)} (default photos; see above)",
    )
    parser.add_argument(
        "--max-tokens", type=int, default=128, help="output tokens per request (default 128)"
    )
    parser.add_argument(
        "--k", type=int, default=3, help="num_speculative_tokens of every method (default 3)"
    )
    parser.add_argument(
        "--tree",
        default="on",
        metavar="SETTINGS",
        help="VLLM_VISPEC_TREE of the tree methods (vispec-tree drafts trees at every batch "
        "size, vispec-auto switches to chains past tree_budget; default 'on': ViSpec's depth 3, "
        "top_k 8)",
    )
    parser.add_argument(
        "--tree-nodes",
        type=int,
        default=29,
        help="num_speculative_tokens of the tree methods: nodes per tree (default 29, "
        "ViSpec's total_token 30)",
    )
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="sampling temperature (default 0: greedy)"
    )
    parser.add_argument(
        "--ignore-eos",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="generate exactly --max-tokens tokens, so every method does the same work "
        "(default on)",
    )
    parser.add_argument(
        "--dtype",
        help="model dtype (default: float32 on CPU, as the tiny test models need; vLLM's "
        "'auto' elsewhere)",
    )
    parser.add_argument(
        "--engine-arg",
        dest="engine_args",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra vllm.LLM / vllm serve engine argument, repeatable; VALUE is parsed as JSON "
        "when it can be (e.g. --engine-arg gpu_memory_utilization=0.8 --engine-arg "
        "enable_prefix_caching=false). On CPU the defaults are vllm_vispec.testing.tiny_targets."
        "cpu_engine_kwargs(); max_num_seqs defaults to the largest batch size",
    )
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=pathlib.Path("benchmarks/results/bench"),
        metavar="DIR",
        help="output folder (default benchmarks/results/bench)",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Benchmark; a user mistake prints ``error: ...`` on stderr and returns 2."""
    try:
        methods = _methods(args)
        engine_args = _parse_engine_args(args.engine_args)
        prompts = load_prompts(args.prompts, max(args.batch_sizes))
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # As the tests and the demo: a bounded KV cache on CPU (ignored elsewhere), local files only.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    load_before = os.getloadavg()
    rows = []
    for mode in args.modes:
        mode_rows = []
        for name, spec in methods:
            kwargs = _engine_kwargs(args, spec, engine_args)
            measure = _offline if mode == "offline" else _serve
            _logger().info("bench %s %s: batch sizes %s", mode, name, args.batch_sizes)
            with _tree_environment(_tree_env(args, name)):
                mode_rows += measure(args, name, kwargs, prompts)
        rows += _compare(mode_rows, args.temperature)
    result = {
        "command": shlex.join(sys.argv),
        "date": datetime.datetime.fromtimestamp(started, datetime.timezone.utc).isoformat(),
        "seconds": time.time() - started,
        "load_average": [load_before[0], os.getloadavg()[0]],
        "machine": machine(),
        "config": {
            "target": str(pathlib.Path(args.target).resolve()),
            "methods": {name: spec for name, spec in methods},
            "tree": {name: _tree_env(args, name) for name in TREE_METHODS},
            "prompts": args.prompts,
            "prompt_list": [{"image": p.image_name, "question": p.question} for p in prompts],
            "batch_sizes": args.batch_sizes,
            "max_tokens": args.max_tokens,
            "k": args.k,
            "temperature": args.temperature,
            "ignore_eos": args.ignore_eos,
            "engine_kwargs": _engine_kwargs(args, None, engine_args),
            # How the ViSpec draft hides image slots (vllm_vispec.draft.model.draft_attention).
            "draft_attention": os.environ.get("VLLM_VISPEC_DRAFT_ATTENTION", "auto"),
        },
        "rows": rows,
    }
    (args.out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "bench.md").write_text(markdown(result))
    plot(result, args.out)
    print(markdown(result))
    _logger().info("wrote bench.json, bench.md, speedup.png, acceptance.png to %s", args.out)
    return 0


def _methods(args: argparse.Namespace) -> list[tuple[str, dict | None]]:
    """Check the arguments; (name, speculative_config) of every method to run, baseline first."""
    target = pathlib.Path(args.target)
    if not target.is_dir():
        raise BenchError(f"--target {target}: no such folder")
    if not (target / "config.json").is_file():
        raise BenchError(f"--target {target}: no config.json (not a model folder)")
    unknown = sorted(set(args.modes) - set(MODES))
    if unknown:
        raise BenchError(f"--modes: unknown mode {unknown[0]!r}; choose from {', '.join(MODES)}")
    if args.prompts not in PROMPT_SETS:
        raise BenchError(
            f"--prompts: unknown prompt set {args.prompts!r}; choose {' or '.join(PROMPT_SETS)}"
        )
    for flag, value in (
        ("--batch-sizes", min(args.batch_sizes)),
        ("--max-tokens", args.max_tokens),
    ):
        if value < 1:
            raise BenchError(f"{flag} must be at least 1, got {value}")
    chosen = args.methods or SPEC_METHODS
    unknown = sorted(set(chosen) - set(SPEC_METHODS))
    if unknown:
        raise BenchError(
            f"--methods: unknown method {unknown[0]!r}; choose from {', '.join(SPEC_METHODS)}"
        )
    drafts = {
        "eagle": ("--eagle-draft", args.eagle_draft),
        **{m: ("--vispec-draft", args.vispec_draft) for m in ("vispec", *TREE_METHODS)},
    }
    methods: list[tuple[str, dict | None]] = [(BASELINE, None)]
    for name in SPEC_METHODS:
        if name not in chosen:
            continue
        if name == "ngram":
            methods.append((name, {"method": "ngram", "num_speculative_tokens": args.k, **NGRAM}))
            continue
        flag, folder = drafts[name]
        if folder is None and args.methods:
            raise BenchError(f"--methods {name} needs {flag} DIR")
        if folder is None:
            _logger().info("no %s given: skipping %s", flag, name)
            continue
        if not (pathlib.Path(folder) / "config.json").is_file():
            raise BenchError(f"{flag} {folder}: no config.json (not a draft folder)")
        k = args.tree_nodes if name in TREE_METHODS else args.k
        spec = {"method": "eagle", "model": str(folder), "num_speculative_tokens": k}
        methods.append((name, spec))
    if any(name in TREE_METHODS for name, _ in methods):
        from vllm_vispec.tree.settings import tree_settings

        try:
            with _tree_environment(_tree_env(args, "vispec-tree")):
                settings = tree_settings()
            assert settings is not None
            settings.check(args.tree_nodes)
        except (ValueError, AssertionError) as e:
            raise BenchError(f"--tree {args.tree!r}, --tree-nodes {args.tree_nodes}: {e}") from None
    return methods


def _tree_env(args: argparse.Namespace, method: str) -> str | None:
    """VLLM_VISPEC_TREE for a method (None: unset, chains)."""
    if method not in TREE_METHODS:
        return None
    extra = TREE_METHODS[method]
    base = "" if args.tree.strip().lower() in ("on", "1", "true", "yes") else args.tree
    return ",".join(x for x in (base, extra) if x) or "on"


@contextlib.contextmanager
def _tree_environment(value: str | None) -> Iterator[None]:
    """VLLM_VISPEC_TREE set to ``value`` (None: unset) while engines of one method run."""
    from vllm_vispec.tree.settings import TREE_ENV

    old = os.environ.pop(TREE_ENV, None)
    if value is not None:
        os.environ[TREE_ENV] = value
    try:
        yield
    finally:
        os.environ.pop(TREE_ENV, None)
        if old is not None:
            os.environ[TREE_ENV] = old


def _parse_engine_args(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BenchError(f"--engine-arg {item!r}: expected KEY=VALUE")
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value
    return out


def _engine_kwargs(
    args: argparse.Namespace, spec: dict | None, engine_args: dict[str, Any]
) -> dict[str, Any]:
    """vllm.LLM keyword arguments: CPU test defaults on CPU, room for the largest batch."""
    from vllm.platforms import current_platform

    from vllm_vispec.bench.cpu_engine import cpu_engine_kwargs

    kwargs: dict[str, Any] = {"seed": 0, "max_num_seqs": max(args.batch_sizes)}
    if current_platform.is_cpu():
        kwargs = cpu_engine_kwargs(**kwargs)
    if args.dtype:
        kwargs["dtype"] = args.dtype
    if spec:
        kwargs["speculative_config"] = spec
    kwargs.update(engine_args)
    return kwargs


# --------------------------------------------------------------------------------------------
# Prompts


@dataclass
class Prompt:
    """One image and one question: a one-turn chat."""

    image_name: str
    image: Any  # PIL.Image.Image
    question: str

    def chat(self) -> list[dict[str, Any]]:
        """For LLM.chat: the PIL image itself."""
        parts = [
            {"type": "image_pil", "image_pil": self.image},
            {"type": "text", "text": self.question},
        ]
        return [{"role": "user", "content": parts}]

    def messages(self) -> list[dict[str, Any]]:
        """For the OpenAI API: the image as a lossless PNG data URL (same pixels as offline)."""
        buf = io.BytesIO()
        self.image.save(buf, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        parts = [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": self.question},
        ]
        return [{"role": "user", "content": parts}]


def load_prompts(name: str, n: int) -> list[Prompt]:
    """The distinct prompts of a set (``n``: how many a toy set makes, the largest batch)."""
    if name == "photos":
        return _photos()
    return _world(name, n)


def _photos() -> list[Prompt]:
    import matplotlib.cbook
    from PIL import Image

    prompts = []
    for photo in PHOTOS:
        with matplotlib.cbook.get_sample_data(photo) as f:
            image = Image.open(f).convert("RGB")
        prompts += [Prompt(photo, image, q) for q in PHOTO_QUESTIONS]
    return prompts


def _world(name: str, n: int) -> list[Prompt]:
    """Held-out scenes of a toy world (``toy`` or ``grounded``)."""
    from vllm_vispec.toy import world_module

    world = world_module(name)
    return [Prompt(r["image"], image, q) for r, image, q in world.prompts(n, TOY_SEED)]


def _cycle(prompts: list[Prompt], n: int) -> list[Prompt]:
    return [prompts[i % len(prompts)] for i in range(n)]


# --------------------------------------------------------------------------------------------
# Measurements


@dataclass
class Answer:
    """One request's generated tokens and times (seconds since the batch was submitted)."""

    token_ids: list[int]
    ttft_s: float
    latency_s: float


def _row(
    mode: str,
    method: str,
    batch: int,
    answers: list[Answer],
    seconds: float,
    spec: dict[str, Any] | None,
) -> dict[str, Any]:
    tokens = sum(len(a.token_ids) for a in answers)
    tpots = [
        (a.latency_s - a.ttft_s) / (len(a.token_ids) - 1) for a in answers if len(a.token_ids) > 1
    ]
    return {
        "mode": mode,
        "method": method,
        "batch": batch,
        "output_tokens": tokens,
        "seconds": seconds,
        "tok_per_s": tokens / seconds,
        "tpot_ms": 1000 * sum(tpots) / len(tpots) if tpots else None,
        "latency_s": sum(a.latency_s for a in answers) / len(answers),
        "ttft_s": sum(a.ttft_s for a in answers) / len(answers),
        "per_request": [
            {"output_tokens": len(a.token_ids), "ttft_s": a.ttft_s, "latency_s": a.latency_s}
            for a in answers
        ],
        **(spec or {}),
        "token_ids": [a.token_ids for a in answers],  # for _compare; not written out
    }


def acceptance(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Spec-decode counter deltas -> mean acceptance length and per-position acceptance."""
    delta = {key: after[key] - before.get(key, 0) for key in SPEC_COUNTERS.values()}
    old_per_pos = before.get("per_pos") or [0] * len(after["per_pos"])
    per_pos = [a - b for a, b in zip(after["per_pos"], old_per_pos, strict=True)]
    drafts = delta["drafts"]
    return {
        **delta,
        "accepted_per_pos": per_pos,
        "mean_acceptance_length": 1 + delta["accepted_tokens"] / drafts if drafts else None,
        "acceptance_per_pos": [a / drafts for a in per_pos] if drafts else None,
    }


def _compare(rows: list[dict[str, Any]], temperature: float) -> list[dict[str, Any]]:
    """Add speedup and lossless (vs no speculation, same batch) to one mode's rows."""
    base = {r["batch"]: r for r in rows if r["method"] == BASELINE}
    for r in rows:
        ref = base[r["batch"]]
        r["speedup"] = r["tok_per_s"] / ref["tok_per_s"]
        differ = [
            i
            for i, (a, b) in enumerate(zip(r["token_ids"], ref["token_ids"], strict=True))
            if a != b
        ]
        r["lossless"] = None if temperature > 0 else not differ
        r["differing_requests"] = [] if temperature > 0 else differ
    for r in rows:
        if r["lossless"] is False:
            _logger().warning(
                "%s %s batch %d: requests %s differ from no speculation",
                r["mode"],
                r["method"],
                r["batch"],
                r["differing_requests"],
            )
        r.pop("token_ids")
    return rows


def _sampling(args: argparse.Namespace, max_tokens: int) -> Any:
    from vllm import SamplingParams

    return SamplingParams(
        temperature=args.temperature, max_tokens=max_tokens, ignore_eos=args.ignore_eos
    )


def _offline(
    args: argparse.Namespace, method: str, kwargs: dict[str, Any], prompts: list[Prompt]
) -> list[dict[str, Any]]:
    """One vllm.LLM for every batch size; times from vLLM's per-request stats."""
    from vllm import LLM

    llm = LLM(model=str(args.target), **{**kwargs, "disable_log_stats": False})
    try:
        llm.chat([p.chat() for p in prompts], _sampling(args, WARMUP_TOKENS), use_tqdm=False)
        params = _sampling(args, args.max_tokens)
        rows = []
        for batch in args.batch_sizes:
            chats = [p.chat() for p in _cycle(prompts, batch)]
            before = offline_counters(llm)
            start = time.monotonic()  # the engine core stamps tokens with the same clock
            outputs = llm.chat(chats, params, use_tqdm=True)
            seconds = time.monotonic() - start
            after = offline_counters(llm)
            answers = [
                Answer(
                    list(o.outputs[0].token_ids),
                    o.metrics.first_token_ts - start,
                    o.metrics.last_token_ts - start,
                )
                for o in outputs
            ]
            spec = acceptance(before, after) if after else None
            rows.append(_row("offline", method, batch, answers, seconds, spec))
        return rows
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()  # an in-process engine's weights go now, before the next method's load


def offline_counters(llm: Any) -> dict[str, Any]:
    from vllm.v1.metrics.reader import Counter, Vector

    out: dict[str, Any] = {}
    for m in llm.get_metrics():
        if isinstance(m, Counter) and m.name in SPEC_COUNTERS:
            out[SPEC_COUNTERS[m.name]] = m.value
        elif isinstance(m, Vector) and m.name == SPEC_PER_POS:
            out["per_pos"] = list(m.values)
    return out


def _serve(
    args: argparse.Namespace, method: str, kwargs: dict[str, Any], prompts: list[Prompt]
) -> list[dict[str, Any]]:
    """One ``vllm serve`` for every batch size; times measured by the client."""
    messages = [p.messages() for p in prompts]
    with VllmServer(pathlib.Path(args.target), kwargs, args.out / f"serve_{method}.log") as server:
        elapsed = server.wait_healthy()
        _logger().info("%s server healthy after %.0f s", method, elapsed)
        asyncio.run(_ask(server.url, messages, args, WARMUP_TOKENS, progress=None))
        rows = []
        for batch in args.batch_sizes:
            before = spec_decode_counters(server.url)
            answers, seconds = asyncio.run(
                _ask(
                    server.url,
                    _cycle(messages, batch),
                    args,
                    args.max_tokens,
                    progress=f"serve {method} batch {batch}",
                )
            )
            after = spec_decode_counters(server.url)
            spec = acceptance(before, after) if after else None
            rows.append(_row("serve", method, batch, answers, seconds, spec))
    return rows


async def _ask(
    url: str,
    conversations: list[list[dict[str, Any]]],
    args: argparse.Namespace,
    max_tokens: int,
    progress: str | None,
) -> tuple[list[Answer], float]:
    """All conversations at once as streaming chat completions; (answers, wall seconds).

    A small client rather than ``vllm bench serve``: that runs as its own process per batch,
    reads prompts from a dataset file and returns texts, while the lossless check needs the
    generated token ids (``return_token_ids``) and the batches here are in-memory image chats.
    """
    import openai
    from tqdm import tqdm

    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", timeout=REQUEST_TIMEOUT_S)
    model = (await client.models.list()).data[0].id
    bar = tqdm(total=len(conversations), desc=progress, disable=progress is None)

    async def one(messages: list[dict[str, Any]]) -> Answer:
        stream = await client.chat.completions.create(
            model=model,
            messages=messages,
            temperature=args.temperature,
            max_tokens=max_tokens,
            stream=True,
            extra_body={"return_token_ids": True, "ignore_eos": args.ignore_eos},
        )
        token_ids: list[int] = []
        first = None
        async for chunk in stream:
            for choice in chunk.choices:
                new = (choice.model_extra or {}).get("token_ids") or []
                if new and first is None:
                    first = time.perf_counter() - start
                token_ids += new
        bar.update()
        latency = time.perf_counter() - start
        return Answer(token_ids, latency if first is None else first, latency)

    start = time.perf_counter()
    answers = await asyncio.gather(*(one(m) for m in conversations))
    seconds = time.perf_counter() - start
    bar.close()
    await client.close()
    return list(answers), seconds


# --------------------------------------------------------------------------------------------
# Report


def machine() -> dict[str, Any]:
    """Where the figures were measured."""
    import torch
    import vllm

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "vllm": vllm.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(result: dict[str, Any]) -> str:
    """bench.md: the setting, then one table per mode."""
    m, cfg = result["machine"], result["config"]
    lines = [
        "# End-to-end speculative decoding benchmark",
        "",
        f"Target `{cfg['target']}`; prompts `{cfg['prompts']}` ({len(cfg['prompt_list'])} "
        f"distinct, cycled); {cfg['max_tokens']} output tokens per request"
        f"{' (ignore_eos)' if cfg['ignore_eos'] else ''}; K={cfg['k']}; temperature "
        f"{cfg['temperature']:g}; VLLM_VISPEC_DRAFT_ATTENTION="
        f"{cfg.get('draft_attention', 'auto')}. Machine: {m['cpu']}, {m['cores']} cores, GPU: "
        f"{m['gpu'] or 'none'}; vLLM {m['vllm']}, torch {m['torch']}; load average "
        f"{result['load_average'][0]:.2f} before, {result['load_average'][1]:.2f} after. "
        f"{result['date']}.",
        "",
        f"Command: `{result['command']}`",
        "",
        "speedup: tokens/s over no speculation at the same batch size; acceptance length: "
        "1 + accepted / drafts; per position: accepted / drafts; lossless: every answer "
        "token-identical to no speculation's.",
    ]
    for mode in dict.fromkeys(r["mode"] for r in result["rows"]):
        lines += [
            "",
            f"## {mode}",
            "",
            "| method | batch | tok/s | TPOT ms | latency s | speedup | acceptance length "
            "| acceptance per position | lossless |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in (r for r in result["rows"] if r["mode"] == mode):
            per_pos = list(r.get("acceptance_per_pos") or [])
            while per_pos and per_pos[-1] == 0:
                per_pos.pop()
            lossless = {True: "yes", False: f"**no** {r['differing_requests']}", None: "n/a"}
            lines.append(
                f"| {r['method']} | {r['batch']} | {r['tok_per_s']:.1f} "
                f"| {_fmt(r['tpot_ms'], '.2f')} | {r['latency_s']:.2f} | {r['speedup']:.2f} "
                f"| {_fmt(r.get('mean_acceptance_length'), '.2f')} "
                f"| {' / '.join(f'{a:.2f}' for a in per_pos) if per_pos else '-'} "
                f"| {lossless[r['lossless']]} |"
            )
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], out: pathlib.Path) -> None:
    """speedup.png (speedup vs batch size) and acceptance.png (acceptance per draft position,
    pooled over batch sizes), one panel per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    modes = list(dict.fromkeys(r["mode"] for r in result["rows"]))
    methods = list(dict.fromkeys(r["method"] for r in result["rows"]))
    batches = result["config"]["batch_sizes"]
    labels = {
        "speedup": "speedup vs no speculation",
        "acceptance": "acceptance (accepted / drafts)",
    }
    for name, ylabel in labels.items():
        fig, axes = plt.subplots(1, len(modes), figsize=(5 * len(modes), 3.8), squeeze=False)
        for ax, mode in zip(axes[0], modes, strict=True):
            for i, method in enumerate(methods):
                rows = [r for r in result["rows"] if r["mode"] == mode and r["method"] == method]
                if name == "speedup":
                    xs, ys = [r["batch"] for r in rows], [r["speedup"] for r in rows]
                else:
                    drafts = sum(r.get("drafts") or 0 for r in rows)
                    if not drafts:
                        continue
                    accepted = [
                        sum(col) for col in zip(*(r["accepted_per_pos"] for r in rows), strict=True)
                    ]
                    while len(accepted) > 1 and accepted[-1] == 0:
                        accepted.pop()
                    xs = list(range(1, len(accepted) + 1))
                    ys = [a / drafts for a in accepted]
                ax.plot(xs, ys, "o-", color=f"C{i}", label=method)
            if name == "speedup":
                ax.set_xscale("log", base=2)
                ax.set_xticks(batches, [str(b) for b in batches])
                ax.set_xlabel("batch size (concurrent requests)")
            else:
                ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
                ax.set_xlabel("draft position (trees: depth)")
                ax.set_ylim(0, 1.05)
            ax.set_ylabel(ylabel)
            ax.set_title(mode)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"{pathlib.Path(result['config']['target']).name}, K={result['config']['k']}")
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=110)
        plt.close(fig)
