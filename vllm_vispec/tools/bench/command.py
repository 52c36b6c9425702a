"""``vllm-vispec bench``: end-to-end speed of ViSpec against plain decoding, ngram and EAGLE.

Runs one target on the same image + question prompts with every method in one go, so the figures are
comparable: no speculation (the baseline), vLLM's ngram prompt lookup, vLLM's EAGLE with a plain
EAGLE-1 draft (--eagle-draft), SpecVLM's drafts (--eaglevlm-draft, --specvlm-draft; chains) and
the ViSpec draft (--vispec-draft), which also runs as vispec-tree
(EAGLE-2 trees of --tree-nodes nodes at every batch size, shaped by --tree) and vispec-auto (the
draft under vLLM's batch-size schedule, num_speculative_tokens_per_batch_size, given by --schedule:
by default chains of --k up to 4 requests and no drafting beyond; how to find the schedule of a
machine: README) and vispec-goodput (vispec.goodput: each step's K chosen while serving among
nothing, chains and trees of --tree-nodes and of depth x top_k nodes, from measured costs and
acceptance). A method whose draft is not given is skipped
(--methods picks a subset). ViSpec's settings reach its engines as vLLM's additional_config
{"vispec": {...}}: --vispec-config for every ViSpec method, plus --tree for the tree methods.
Each method runs at every batch size (the number of concurrent requests) in two modes:

  offline  vllm.LLM in this process: one engine per method, reused across batch sizes; a wave
           is one LLM.chat call with that many prompts (max_num_seqs >= the largest batch).
  serve    a real `vllm serve` per method on 127.0.0.1; a batch is that many concurrent
           streaming chat completions through the openai client (images as base64 data URLs);
           acceptance is read from the server's Prometheus /metrics.

Every method runs --repeats times (default 2), interleaved (all methods once, then again), each
run on a fresh engine or server; a row is the method's fastest run at that batch size, with
every run's tokens/s and the spread (single runs on small machines move by tens of percent).
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
  toy      held-out toy-world scenes (vllm_vispec.tools.toy.world, seed 10000), one per request.
  grounded held-out strips of the image-grounded world (vllm_vispec.tools.toy.grounded_world, seed
           10000, 256 image tokens each), one per request.
  content  held-out strips of the content world (vllm_vispec.tools.toy.content_world, seed 10000,
           256 image tokens each): facts asked in an order the question decides.
Each batch size runs in waves of that many concurrent requests until every prompt has run once
(batch 1: each prompt alone, one after the other), cycling the set when a batch is larger.

Writes to --out: bench.json (every figure, per-request timings, each ViSpec method's settings,
machine, versions, command, date), bench.md (a table per mode), throughput.png, speedup.png,
acceptance.png and, in serve mode, one serve_<method>.log per server and prompts.jsonl, the
prompts for vLLM's own `vllm bench serve --dataset-name custom_image` (bench.md gives the
command), so a serve row can be checked with vLLM's client against the same server."""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import logging
import os
import pathlib
import shlex
import sys
import time
from dataclasses import dataclass
from typing import Any

from vllm_vispec.settings import SETTINGS_KEY, ViSpecSettings
from vllm_vispec.tools.bench import offline, serve
from vllm_vispec.tools.bench.prompts import PROMPT_SETS, load_prompts
from vllm_vispec.tools.bench.report import (
    BASELINE,
    best_of,
    compare,
    machine,
    markdown,
    plot,
)

EPILOG = """\
example:
  vllm-vispec bench --target Qwen2.5-VL-7B-Instruct --vispec-draft vispec-qwen7b \\
    --eagle-draft eagle-qwen7b --batch-sizes 1 4 16 --max-tokens 256 --out results/qwen7b \\
    --tree '{"depth": 4, "top_k": 6}' --vispec-config '{"draft_attention": "triton"}'"""

RUNNERS = {"offline": offline.measure, "serve": serve.measure}
MODES = tuple(RUNNERS)
VISPEC_METHODS = ("vispec", "vispec-tree", "vispec-auto", "vispec-goodput")
# SpecVLM's drafts, chains of --k (the vispec settings apply to them too).
SPECVLM_METHODS = ("eaglevlm", "specvlm")
SPEC_METHODS = ("ngram", "eagle", *VISPEC_METHODS, *SPECVLM_METHODS)
# The ViSpec methods with trees: at every batch size, under vLLM's batch-size schedule, or
# chosen per step with chains and nothing by vispec.goodput.
TREE_METHODS = ("vispec-tree", "vispec-auto", "vispec-goodput")
CHAIN_BATCH = 4  # the default schedule drafts chains up to this batch size, nothing beyond
NGRAM = {"prompt_lookup_max": 4, "prompt_lookup_min": 2}


class BenchError(Exception):
    """A user mistake: reported as one ``error:`` line, exit code 2."""


@functools.cache
def _logger() -> logging.Logger:
    """vLLM's logger, created on first use (``import vllm`` takes seconds; --help should not)."""
    from vllm.logger import init_logger

    return init_logger(f"vllm.{__name__}")


@dataclass(frozen=True)
class Method:
    """One method of the comparison: its vLLM ``speculative_config`` (None: no speculation) and,
    for ViSpec, its ``additional_config["vispec"]`` (:mod:`vllm_vispec.settings`)."""

    name: str
    spec: dict[str, Any] | None = None
    vispec: dict[str, Any] | None = None


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
    for name in SPECVLM_METHODS:
        parser.add_argument(
            f"--{name}-draft",
            metavar="DIR",
            help=f"{'EagleVLM' if name == 'eaglevlm' else 'SpecVLM'} draft folder (`vllm-vispec "
            f"train --draft {name}`); else skipped",
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
        default="true",
        metavar="JSON",
        help="the vispec.tree setting of the tree methods: true (ViSpec's depth 3, top_k 8; the "
        'default) or an object of tree settings, e.g. \'{"depth": 4, "top_k": 6, '
        '"min_prob": 0.05}\'; vispec-tree drafts trees at every batch size, vispec-auto where '
        "--schedule says",
    )
    parser.add_argument(
        "--schedule",
        metavar="JSON",
        help="vispec-auto's num_speculative_tokens_per_batch_size: [[first batch size, last, "
        "K], ...]; a K of at least depth x top_k drafts trees of K nodes, a smaller K chains, "
        "0 nothing (default: [[1, 4, K], [5, LARGEST_BATCH, 0]], chains of --k up to 4 "
        "requests and no drafting beyond: what paid on this project's CPU)",
    )
    parser.add_argument(
        "--tree-nodes",
        type=int,
        default=29,
        help="num_speculative_tokens of the tree methods: nodes per tree (default 29, "
        "ViSpec's total_token 30)",
    )
    parser.add_argument(
        "--vispec-config",
        default="{}",
        metavar="JSON",
        help="the other vispec settings of every ViSpec method (vLLM's additional_config "
        '"vispec" object without "tree"), e.g. \'{"draft_attention": "torch"}\' '
        "(default {}: the plugin's defaults)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="runs of every method, interleaved; rows report the fastest and the spread "
        "(default 2)",
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
        "enable_prefix_caching=false). On CPU the defaults are vllm_vispec.tools.bench.cpu_engine."
        "cpu_engine_kwargs(); max_num_seqs defaults to the largest batch size; not "
        "additional_config (--vispec-config, --tree)",
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
        runs = []
        for repeat in range(args.repeats):
            run_rows = []
            for method in methods:
                kwargs = _engine_kwargs(args, method, engine_args)
                _logger().info(
                    "bench %s %s (run %d of %d): batch sizes %s",
                    mode, method.name, repeat + 1, args.repeats, args.batch_sizes,
                )  # fmt: skip
                run_rows += RUNNERS[mode](args, method.name, kwargs, prompts)
            runs.append(compare(run_rows, args.temperature))
        rows += best_of(runs)
    result = {
        "command": shlex.join(sys.argv),
        "date": datetime.datetime.fromtimestamp(started, datetime.timezone.utc).isoformat(),
        "seconds": time.time() - started,
        "load_average": [load_before[0], os.getloadavg()[0]],
        "machine": machine(),
        "config": {
            "target": str(pathlib.Path(args.target).resolve()),
            "methods": {m.name: m.spec for m in methods},
            # additional_config["vispec"] of each ViSpec method (vllm_vispec.settings).
            "vispec": {m.name: m.vispec for m in methods if m.vispec is not None},
            "prompts": args.prompts,
            "prompt_list": [{"image": p.image_name, "question": p.question} for p in prompts],
            "batch_sizes": args.batch_sizes,
            "max_tokens": args.max_tokens,
            "k": args.k,
            "temperature": args.temperature,
            "ignore_eos": args.ignore_eos,
            "repeats": args.repeats,
            "engine_kwargs": _engine_kwargs(args, Method(BASELINE), engine_args),
        },
        "rows": rows,
    }
    (args.out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "bench.md").write_text(markdown(result))
    plot(result, args.out)
    print(markdown(result))
    _logger().info("wrote bench.json, bench.md and the plots (*.png) to %s", args.out)
    return 0


def _methods(args: argparse.Namespace) -> list[Method]:
    """Check the arguments; every method to run, baseline first."""
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
        ("--repeats", args.repeats),
    ):
        if value < 1:
            raise BenchError(f"{flag} must be at least 1, got {value}")
    chosen = args.methods or SPEC_METHODS
    unknown = sorted(set(chosen) - set(SPEC_METHODS))
    if unknown:
        raise BenchError(
            f"--methods: unknown method {unknown[0]!r}; choose from {', '.join(SPEC_METHODS)}"
        )
    vispec = _vispec_settings(args)
    drafts = {
        "eagle": ("--eagle-draft", args.eagle_draft),
        **{m: ("--vispec-draft", args.vispec_draft) for m in VISPEC_METHODS},
        **{m: (f"--{m}-draft", getattr(args, f"{m}_draft")) for m in SPECVLM_METHODS},
    }
    methods = [Method(BASELINE)]
    for name in SPEC_METHODS:
        if name not in chosen:
            continue
        if name == "ngram":
            spec = {"method": "ngram", "num_speculative_tokens": args.k, **NGRAM}
            methods.append(Method(name, spec))
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
        if name == "vispec-auto":
            spec["num_speculative_tokens"] = max(k for _, _, k in _schedule(args))
            spec["num_speculative_tokens_per_batch_size"] = _schedule(args)
        settings = vispec["vispec"] if name in SPECVLM_METHODS else vispec.get(name)
        if name == "vispec-goodput":
            settings = {**settings, "goodput": True}
        if name == "vispec-auto" and spec["num_speculative_tokens"] < _min_tree(settings):
            settings = vispec["vispec"]  # a schedule of chains only: no tree engine
        methods.append(Method(name, spec, settings))
    return methods


def _min_tree(settings: dict[str, Any]) -> int:
    """The smallest K that drafts a tree under these vispec settings."""
    tree = ViSpecSettings.from_dict(settings).tree
    assert tree is not None
    return tree.min_nodes


def _schedule(args: argparse.Namespace) -> list[list[int]]:
    """vispec-auto's batch-size schedule: --schedule, or chains of --k up to CHAIN_BATCH
    requests and nothing beyond (what paid on this project's CPU, README's Measured)."""
    if args.schedule is None:
        largest = max([*args.batch_sizes, CHAIN_BATCH + 1])
        return [[1, CHAIN_BATCH, args.k], [CHAIN_BATCH + 1, largest, 0]]
    schedule = _json_arg("--schedule", args.schedule, "[[1, 1, 29], [2, 4, 3], [5, 64, 0]]")
    if not (
        isinstance(schedule, list)
        and schedule
        and all(isinstance(e, list) and len(e) == 3 for e in schedule)
        and all(isinstance(v, int) and v >= 0 for e in schedule for v in e)
    ):
        raise BenchError(
            f"--schedule {args.schedule}: expected a list of [first batch size, last, K] "
            "integer triples, e.g. [[1, 1, 29], [2, 4, 3], [5, 64, 0]]"
        )
    return schedule


def _vispec_settings(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The ``vispec`` settings of each ViSpec method from --vispec-config and --tree, checked
    as the engine will check them."""
    config = _json_arg("--vispec-config", args.vispec_config, '{"draft_attention": "torch"}')
    if isinstance(config, dict) and "tree" in config:
        raise BenchError(
            '--vispec-config: leave "tree" out; --tree sets the tree of vispec-tree and '
            "vispec-auto (plain vispec drafts chains)"
        )
    _check("--vispec-config", config)
    tree = _json_arg("--tree", args.tree, '{"depth": 4, "top_k": 6}')
    _check("--tree", {"tree": tree})
    if tree is False:
        raise BenchError(
            "--tree false: vispec-tree and vispec-auto draft trees; for chains alone run "
            "--methods vispec"
        )
    settings = {"vispec": config}
    for name in TREE_METHODS:
        settings[name] = {**config, "tree": tree}
        try:
            _check("--tree", settings[name]).tree.check(args.tree_nodes)
        except ValueError as e:
            raise BenchError(f"--tree '{args.tree}', --tree-nodes {args.tree_nodes}: {e}") from None
    return settings


def _json_arg(flag: str, value: str, example: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise BenchError(
            f"{flag} {value!r} is not JSON ({e.msg}); e.g. {flag} '{example}'"
        ) from None


def _check(flag: str, vispec: Any) -> ViSpecSettings:
    """The settings of a ``vispec`` object; a bad one is a BenchError naming ``flag``."""
    try:
        return ViSpecSettings.from_dict(vispec)
    except ValueError as e:
        raise BenchError(f"{flag}: {e}") from None


def _parse_engine_args(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BenchError(f"--engine-arg {item!r}: expected KEY=VALUE")
        key = key.replace("-", "_")
        if key == "additional_config":
            raise BenchError(
                "--engine-arg additional_config: the bench sets it per method; give ViSpec's "
                "settings with --vispec-config and --tree"
            )
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _engine_kwargs(
    args: argparse.Namespace, method: Method, engine_args: dict[str, Any]
) -> dict[str, Any]:
    """vllm.LLM keyword arguments: CPU test defaults on CPU, room for the largest batch, the
    method's speculative_config and ViSpec settings."""
    from vllm.platforms import current_platform

    from vllm_vispec.tools.bench.cpu_engine import cpu_engine_kwargs

    kwargs: dict[str, Any] = {"seed": 0, "max_num_seqs": max(args.batch_sizes)}
    if current_platform.is_cpu():
        kwargs = cpu_engine_kwargs(**kwargs)
    if args.dtype:
        kwargs["dtype"] = args.dtype
    if method.spec:
        kwargs["speculative_config"] = method.spec
    if method.vispec is not None:
        kwargs["additional_config"] = {SETTINGS_KEY: method.vispec}
    kwargs.update(engine_args)
    return kwargs
