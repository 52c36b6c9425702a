"""What a bench run reports: one row per mode, method and batch size, compared with no
speculation, and written as bench.md and plots.

Both runners (offline, serve) produce the same rows from the same figures, so the two modes'
tables are comparable; :func:`markdown` also renders bench.json files of earlier releases.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import platform
from dataclasses import dataclass
from typing import Any

from vllm_vispec.tools.bench.server import SPEC_COUNTERS

BASELINE = "no-spec"
"""The method without speculation: every row's speedup and losslessness are measured against
its row at the same batch size and mode."""


@dataclass
class Answer:
    """One request's generated tokens and times (seconds since the batch was submitted)."""

    token_ids: list[int]
    ttft_s: float
    latency_s: float


def row(
    mode: str,
    method: str,
    batch: int,
    answers: list[Answer],
    seconds: float,
    spec: dict[str, Any] | None,
) -> dict[str, Any]:
    """One timed batch's figures; ``spec``: its :func:`acceptance` (None without drafts)."""
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
        "token_ids": [a.token_ids for a in answers],  # for compare(); not written out
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


def compare(rows: list[dict[str, Any]], temperature: float) -> list[dict[str, Any]]:
    """Add speedup and lossless (vs no speculation, same batch) to one mode's rows."""
    from vllm.logger import init_logger

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
            init_logger(f"vllm.{__name__}").warning(
                "%s %s batch %d: requests %s differ from no speculation",
                r["mode"],
                r["method"],
                r["batch"],
                r["differing_requests"],
            )
        r.pop("token_ids")
    return rows


def best_of(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One mode's rows over repeated runs (each a list of :func:`compare`'d rows): per method
    and batch size the run with the most tokens/s, with every run's tokens/s (``runs_tok_per_s``)
    and ``spread`` (slowest / fastest - 1); lossless only if every run was; speedup against the
    best no-speculation run of that batch size."""
    best: dict[tuple[str, int], dict[str, Any]] = {}
    every: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for rows in runs:
        for r in rows:
            key = (r["method"], r["batch"])
            every.setdefault(key, []).append(r)
            if key not in best or r["tok_per_s"] > best[key]["tok_per_s"]:
                best[key] = r
    base = {b: r["tok_per_s"] for (m, b), r in best.items() if m == BASELINE}
    out = []
    for key, r in best.items():
        speeds = [x["tok_per_s"] for x in every[key]]
        lossless = [x["lossless"] for x in every[key]]
        differ = sorted({i for x in every[key] for i in x["differing_requests"]})
        out.append(
            {
                **r,
                "runs_tok_per_s": speeds,
                "spread": 1 - min(speeds) / max(speeds),
                "speedup": r["tok_per_s"] / base[key[1]],
                "lossless": None if None in lossless else all(lossless),
                "differing_requests": differ,
            }
        )
    return out


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


def _vispec_settings(cfg: dict[str, Any]) -> str:
    """The ViSpec methods' settings for the header: ``additional_config["vispec"]`` per method;
    bench.json files of earlier releases recorded the environment variables of the time."""
    if "vispec" in cfg:
        settings = ", ".join(f"{name} `{json.dumps(v)}`" for name, v in cfg["vispec"].items())
        return f"; ViSpec settings (additional_config vispec): {settings}" if settings else ""
    old = []
    if "draft_attention" in cfg:
        old.append(f"VLLM_VISPEC_DRAFT_ATTENTION={cfg['draft_attention']}")
    old += [f"{name} VLLM_VISPEC_TREE={v}" for name, v in cfg.get("tree", {}).items()]
    return "".join(f"; {item}" for item in old)


def markdown(result: dict[str, Any]) -> str:
    """bench.md: the setting, then one table per mode."""
    m, cfg = result["machine"], result["config"]
    lines = [
        "# End-to-end speculative decoding benchmark",
        "",
        f"Target `{cfg['target']}`; prompts `{cfg['prompts']}` ({len(cfg['prompt_list'])} "
        f"distinct; each batch size in waves through all of them); {cfg['max_tokens']} output "
        "tokens per request"
        f"{' (ignore_eos)' if cfg['ignore_eos'] else ''}; K={cfg['k']}; temperature "
        f"{cfg['temperature']:g}{_vispec_settings(cfg)}. Machine: {m['cpu']}, {m['cores']} "
        f"cores, GPU: {m['gpu'] or 'none'}; vLLM {m['vllm']}, torch {m['torch']}; load average "
        f"{result['load_average'][0]:.2f} before, {result['load_average'][1]:.2f} after. "
        f"{result['date']}.",
        "",
        f"Command: `{result['command']}`",
        "",
        "speedup: tokens/s over no speculation at the same batch size; acceptance length: "
        "1 + accepted / drafts; per position: accepted / drafts; lossless: every answer "
        "token-identical to no speculation's."
        + (
            f" Every method ran {result['config']['repeats']} times, interleaved; each row is "
            "its fastest run, spread: 1 - slowest / fastest."
            if result["config"].get("repeats", 1) > 1
            else ""
        ),
    ]
    if any(r["mode"] == "serve" for r in result["rows"]):
        from vllm_vispec.tools.bench.serve import DATASET, vllm_bench_command

        reproduce = vllm_bench_command(
            "http://127.0.0.1:8000",
            cfg["target"],
            pathlib.Path(DATASET),
            batch=cfg["batch_sizes"][0],
            num_prompts=len(cfg["prompt_list"]),
            max_tokens=cfg["max_tokens"],
            temperature=cfg["temperature"],
            ignore_eos=cfg["ignore_eos"],
        )
        lines += [
            "",
            "A serve row with vLLM's own client: start `vllm serve` with the method's flags "
            "(the first lines of its serve_<method>.log), then (here batch "
            f"{cfg['batch_sizes'][0]}; `--max-concurrency` is the batch size):",
            "",
            f"    {' '.join(reproduce)}",
        ]
    for mode in dict.fromkeys(r["mode"] for r in result["rows"]):
        lines += [
            "",
            f"## {mode}",
            "",
            "| method | batch | tok/s | spread | TPOT ms | latency s | speedup "
            "| acceptance length | acceptance per position | lossless |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in (r for r in result["rows"] if r["mode"] == mode):
            per_pos = list(r.get("acceptance_per_pos") or [])
            while per_pos and per_pos[-1] == 0:
                per_pos.pop()
            lossless = {True: "yes", False: f"**no** {r['differing_requests']}", None: "n/a"}
            lines.append(
                f"| {r['method']} | {r['batch']} | {r['tok_per_s']:.1f} "
                f"| {_fmt(r.get('spread'), '.0%')} | {_fmt(r['tpot_ms'], '.2f')} "
                f"| {r['latency_s']:.2f} | {r['speedup']:.2f} "
                f"| {_fmt(r.get('mean_acceptance_length'), '.2f')} "
                f"| {' / '.join(f'{a:.2f}' for a in per_pos) if per_pos else '-'} "
                f"| {lossless[r['lossless']]} |"
            )
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], out: pathlib.Path) -> None:
    """throughput.png (tokens/s vs batch size), speedup.png (speedup vs batch size) and
    acceptance.png (acceptance per draft position, pooled over batch sizes), a panel per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    modes = list(dict.fromkeys(r["mode"] for r in result["rows"]))
    methods = list(dict.fromkeys(r["method"] for r in result["rows"]))
    batches = result["config"]["batch_sizes"]
    labels = {
        "throughput": "output tokens/s",
        "speedup": "speedup vs no speculation",
        "acceptance": "acceptance (accepted / drafts)",
    }
    by_batch = {"throughput": "tok_per_s", "speedup": "speedup"}
    for name, ylabel in labels.items():
        fig, axes = plt.subplots(1, len(modes), figsize=(5 * len(modes), 3.8), squeeze=False)
        for ax, mode in zip(axes[0], modes, strict=True):
            for i, method in enumerate(methods):
                rows = [r for r in result["rows"] if r["mode"] == mode and r["method"] == method]
                if name in by_batch:
                    xs, ys = [r["batch"] for r in rows], [r[by_batch[name]] for r in rows]
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
            if name in by_batch:
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
