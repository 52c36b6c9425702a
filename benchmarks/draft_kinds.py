"""ViSpec, EagleVLM, SpecVLM (gated and each primitive) and EAGLE-1 drafts at equal training
budget on one world, in vLLM: acceptance and what each keeps of an image.

    python benchmarks/draft_kinds.py --world grounded           # trains what is missing
    python benchmarks/draft_kinds.py --world content
    python benchmarks/draft_kinds.py --drafts eaglevlm specvlm specvlm:pool:10

A draft is ``KIND[:COMPRESSOR[:RATIO[:COMPUTE_WEIGHT]]]`` (``vllm-vispec train --draft KIND
--compressor ... --compression RATIO --compute-weight W``). Every draft trains on the data, steps,
batch and recipe that benchmarks/toy_world.py gives ViSpec and EAGLE-1 (whose full-budget drafts in
models/WORLD/ are reused where shipped), then drafts K=3 chains for the held-out prompts in one
vLLM engine each. Figures: mean acceptance length (vLLM's), whether the output equals plain
decoding, the draft's KV rows per image (EAGLE-1 and EagleVLM: every image token; ViSpec: its
num_q - 1 compressed tokens; SpecVLM: the compressor's tokens, averaged over the images, with the
gate's choices) and its prefill time per image (:func:`draft_prefill_ms`).
Writes benchmarks/results/draft_kinds_WORLD.{md,json,png} and draft_kinds.md, one table of every
world measured so far; the trained drafts stay in --work, and the EAGLE-1, ViSpec, EagleVLM and
gated SpecVLM drafts it trained (none of them shipped yet) are copied to models/WORLD/, beside
the world's target.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import pathlib
import platform
import shlex
import shutil
import statistics
import sys
import time
from typing import Any

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the drafter is read in-process

from toy_world import (  # noqa: E402
    DRAFT_SEED,
    EVAL_SEED,
    RESULTS,
    ROOT,
    Budget,
    _prompts,
    check_target,
    offline_engine,
)

from vllm_vispec.tools.toy import WORLDS, world_module  # noqa: E402

DRAFTS = (
    "eagle",
    "vispec",
    "eaglevlm",
    "specvlm",
    "specvlm:pool:3",
    "specvlm:pool:10",
    "specvlm:prune:10",
    "specvlm:conv:3",
    "specvlm:resampler",
)
SHIPPED = ("eagle", "vispec", "eaglevlm", "specvlm")  # models/WORLD/ holds these
TIMING_SEED = EVAL_SEED + 1
"""Prompts of the prefill timing: held out, and other than the acceptance prompts."""


def parse(draft: str) -> dict[str, Any]:
    """``KIND[:COMPRESSOR[:RATIO[:COMPUTE_WEIGHT]]]`` -> TrainConfig fields."""
    kind, compressor, ratio, weight = (draft.split(":") + [""] * 3)[:4]
    fields: dict[str, Any] = {"draft": kind}
    if compressor:
        fields["compressor"] = compressor
    if ratio:
        fields["compression"] = int(ratio)
    if weight:
        fields["compute_weight"] = float(weight)
    return fields


def train_draft(
    world: Any, target: pathlib.Path, work: pathlib.Path, draft: str, budget: Budget
) -> pathlib.Path:
    """The full-budget draft (the ones models/WORLD/ ships are taken from there)."""
    from vllm_vispec.tools.train.trainer import TrainConfig, train

    shipped = ROOT / "models" / work.name / draft
    if draft in SHIPPED and (shipped / "config.json").exists():
        return shipped
    out = work / "kinds" / draft.replace(":", "-")
    if (out / "final" / "config.json").exists():
        return out / "final"
    images, data = work / "draft_images", work / "draft_data.json"
    if not data.exists():
        data.write_text(json.dumps(world.make_samples(budget.samples, DRAFT_SEED, images)))
    shutil.rmtree(out, ignore_errors=True)
    print(f"training {draft} ...", flush=True)
    return train(
        TrainConfig(
            target=target,
            data=[data],
            image_root=images,
            out=out,
            max_steps=max(budget.units) * budget.unit_steps,
            batch_size=budget.batch_size,
            lr=budget.lr,
            warmup_ratio=0.1,
            num_q=budget.num_q,
            **parse(draft),
        )
    )


def measure(
    target: pathlib.Path,
    chats: list,
    max_tokens: int,
    draft: pathlib.Path | None,
    timing_chats: list = (),
) -> dict[str, Any]:
    """One engine: greedy ids, acceptance, what the draft keeps per image and (on
    ``timing_chats``, other prompts than ``chats`` so that no prefix is cached) its prefill time
    per image."""
    from vllm import SamplingParams

    from vllm_vispec.tools.bench.offline import offline_counters
    from vllm_vispec.tools.bench.report import acceptance

    spec = {"method": "eagle", "model": str(draft), "num_speculative_tokens": 3}
    with offline_engine(target, len(chats), spec if draft else None) as llm:
        before = offline_counters(llm)
        start = time.perf_counter()
        outputs = llm.chat(chats, SamplingParams(temperature=0, max_tokens=max_tokens))
        seconds = time.perf_counter() - start
        after = offline_counters(llm)
        kept = _kept(llm) if draft else {}
        prefill = draft_prefill_ms(llm, timing_chats) if draft and timing_chats else None
    image = json.loads((target / "config.json").read_text())["image_token_id"]
    return {
        "ids": [list(o.outputs[0].token_ids) for o in outputs],
        "image_tokens": sum(o.prompt_token_ids.count(image) for o in outputs) / len(outputs),
        "acceptance": acceptance(before, after) if after else {},
        "seconds": round(seconds, 2),
        "prefill_ms_per_image": prefill,
        **kept,
    }


def draft_prefill_ms(llm: Any, chats: list, max_tokens: int = 8) -> float:
    """The draft's prefill time per image, in vLLM: each one-image chat runs alone, every call
    of the drafter's ``propose`` is timed; the first of a request drafts over the whole prompt
    (image rows, compressor and adaptor included) and then its chain, the later ones the chain
    alone, so the median first call minus the median later call is the prefill's share."""
    from vllm import SamplingParams

    from vllm_vispec.tools.bench.offline import timed_propose

    calls: list[float] = []
    timed_propose(llm, calls)
    first, later = [], []
    for chat in chats:
        calls.clear()
        llm.chat([chat], SamplingParams(temperature=0, max_tokens=max_tokens), use_tqdm=False)
        first.append(calls[0])
        later += calls[1:]
    return round(1e3 * (statistics.median(first) - statistics.median(later)), 2)


def _kept(llm: Any) -> dict[str, Any]:
    """The draft's KV rows per image, and the compressor's choices (SpecVLM)."""
    from vllm_vispec.tools.bench.offline import drafter as engine_drafter

    drafter = engine_drafter(llm)
    vision = getattr(drafter, "vision", None)
    if vision is None:  # vLLM's own EAGLE-1: every image token is a draft row
        return {"kept_per_image": None}
    cfg = drafter.draft.vispec_config
    if cfg.kind == "vispec":
        return {"kept_per_image": cfg.num_q - 1}
    if cfg.kind == "eaglevlm":
        return {"kept_per_image": None}
    sizes = [vision.features.get(k).shape[0] for k in list(vision.features._items)]
    return {
        "kept_per_image": round(sum(sizes) / max(len(sizes), 1), 2),
        "choices": dict(collections.Counter(vision.choices)),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    world = world_module(args.world)
    work = args.work / args.world
    work.mkdir(parents=True, exist_ok=True)
    target = ROOT / "models" / args.world / "target"
    check_target(args.world, target)
    prompts = _prompts(world, args.prompts)
    chats = [c for _, c in prompts]
    timing = [c for _, c in _prompts(world, args.timing_prompts, TIMING_SEED)]
    started = time.perf_counter()
    budget = Budget()
    drafts = {d: train_draft(world, target, work, d, budget) for d in args.drafts}
    for d in SHIPPED:
        if d in drafts and drafts[d].parent.parent == work / "kinds":
            dst = ROOT / "models" / args.world / d
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(drafts[d], dst, ignore=shutil.ignore_patterns("trainer_state"))
    plain = measure(target, chats, args.max_tokens, None)
    image_tokens = plain["image_tokens"]
    rows = []
    for name, folder in drafts.items():
        got = measure(target, chats, args.max_tokens, folder, timing)
        rows.append(
            {
                "draft": name,
                "mean_acceptance_length": got["acceptance"].get("mean_acceptance_length"),
                "acceptance_per_pos": got["acceptance"].get("acceptance_per_pos"),
                "kept_per_image": (
                    image_tokens if got["kept_per_image"] is None else got["kept_per_image"]
                ),
                "choices": got.get("choices"),
                "prefill_ms_per_image": got["prefill_ms_per_image"],
                "seconds": got["seconds"],
                "lossless": got["ids"] == plain["ids"],
            }
        )
        print(rows[-1], flush=True)
    return {
        "world": args.world,
        "rows": rows,
        "plain_seconds": plain["seconds"],
        "image_tokens": image_tokens,
        "budget": {
            "steps": max(budget.units) * budget.unit_steps,
            "batch_size": budget.batch_size,
            "lr": budget.lr,
            "samples": budget.samples,
        },  # fmt: skip
        "prompts": args.prompts,
        "timing_prompts": args.timing_prompts,
        "max_tokens": args.max_tokens,
        "seconds": round(time.perf_counter() - started),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU",
        "command": shlex.join(["python", *sys.argv]),
        "date": datetime.date.today().isoformat(),
    }


def write_results(result: dict[str, Any], out: pathlib.Path) -> None:
    """draft_kinds_WORLD.json, a Markdown table, a plot of acceptance against rows kept and
    prefill time, and draft_kinds.md: every world measured so far in one table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    name = f"draft_kinds_{result['world']}"
    (out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    b = result["budget"]
    lines = [
        f"# {result['world'].capitalize()} world: draft kinds at equal training budget",
        "",
        f"Command: `{result['command']}` ({result['date']}, {result['machine']}, "
        f"{result['seconds']} s). {result['prompts']} held-out prompts, greedy, up to "
        f"{result['max_tokens']} tokens, K=3 chains, one vLLM engine per draft (plain decoding: "
        f"{result['plain_seconds']} s for all prompts at once).",
        "",
        f"Training: {b['steps']} steps of {b['batch_size']} conversations ({b['samples']} "
        f"samples of the world), lr {b['lr']}, recipe specvlm, for every draft. Gated SpecVLM "
        "drafts (`specvlm`, `specvlm:gate:RATIO:W`) draw the primitives uniformly for the first "
        "half of the steps (`--gate-warmup 0.5`), then train the gate (straight-through "
        "Gumbel-softmax, a score-function term and W times the share of image rows kept; W "
        "0.05 by default).",
        "",
        f"Draft prefill per image: {result.get('timing_prompts')} other held-out prompts, one at "
        "a time; median time of the drafter's first `propose` call of a request (prefill over "
        "the prompt, image rows, compressor and adaptor included, then its chain) minus the "
        "median of its later calls (the chain alone).",
        "",
        "| draft | mean acceptance length | per position | draft rows per image | "
        "draft prefill ms per image | compressor choices | generate s | lossless |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        per_pos = "/".join(f"{p:.2f}" for p in r["acceptance_per_pos"] or [])
        choices = ", ".join(f"{k} {v}" for k, v in (r["choices"] or {}).items()) or "-"
        lines.append(
            f"| {r['draft']} | {r['mean_acceptance_length'] or 1.0:.2f} | {per_pos} | "
            f"{r['kept_per_image']} | {r.get('prefill_ms_per_image', '-')} | {choices} | "
            f"{r['seconds']} | {r['lossless']} |"
        )
    lines += ["", f"![acceptance vs draft rows and prefill per image]({name}.png)", ""]
    (out / f"{name}.md").write_text("\n".join(lines))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, label in (
        (axes[0], "kept_per_image", "draft rows per image"),
        (axes[1], "prefill_ms_per_image", "draft prefill ms per image"),
    ):
        for r in result["rows"]:
            if r.get(key) is not None:
                y = r["mean_acceptance_length"] or 1.0
                ax.scatter(r[key], y)
                ax.annotate(r["draft"], (r[key], y), fontsize=7)
        ax.set_xlabel(label)
    axes[0].set_xscale("symlog")
    axes[0].set_xlim(left=0)
    axes[0].set_ylabel("mean acceptance length (K=3)")
    fig.suptitle(f"{result['world'].capitalize()} world: draft kinds")
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=120)
    plt.close(fig)
    write_summary(out)


def write_summary(out: pathlib.Path) -> None:
    """draft_kinds.md: acceptance, rows and prefill per image of every draft on every world
    with a draft_kinds_WORLD.json in ``out``, and each vision-aware draft's acceptance over
    EAGLE-1's."""
    results = [json.loads(f.read_text()) for f in sorted(out.glob("draft_kinds_*.json"))]
    worlds = [r["world"] for r in results]
    rows = {w: {r["draft"]: r for r in res["rows"]} for w, res in zip(worlds, results, strict=True)}
    drafts = list(dict.fromkeys(d for w in worlds for d in rows[w]))
    head = " | ".join(f"{w}: acceptance (/ EAGLE-1) | rows | prefill ms" for w in worlds)
    lines = [
        "# Draft kinds on every world (K=3 chains, in vLLM)",
        "",
        "Per world: mean acceptance length (in brackets: over EAGLE-1's on that world), draft "
        "rows per image, draft prefill ms per image; every row's output equals plain decoding "
        "unless marked NOT LOSSLESS. Commands, training and the other columns: "
        + ", ".join(f"[{w}](draft_kinds_{w}.md)" for w in worlds)
        + ".",
        "",
        f"| draft | {head} |",
        "|---|" + "---|---|---|" * len(worlds),
    ]
    for d in drafts:
        cells = []
        for w in worlds:
            r, eagle = rows[w].get(d), rows[w].get("eagle")
            if r is None:
                cells.append("- | - | -")
                continue
            acc = r["mean_acceptance_length"] or 1.0
            ratio = f" ({acc / eagle['mean_acceptance_length']:.2f}x)" if eagle else ""
            lossless = "" if r["lossless"] else " NOT LOSSLESS"
            cells.append(f"{acc:.2f}{ratio}{lossless} | {r['kept_per_image']} | "
                         f"{r.get('prefill_ms_per_image', '-')}")  # fmt: skip
        lines.append(f"| {d} | {' | '.join(cells)} |")
    (out / "draft_kinds.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--world", choices=WORLDS, default="grounded")
    parser.add_argument(
        "--drafts", nargs="+", default=list(DRAFTS), help="KIND[:COMPRESSOR[:RATIO[:W]]] each"
    )
    parser.add_argument("--prompts", type=int, default=48, help="held-out prompts (default 48)")
    parser.add_argument("--max-tokens", type=int, default=64, help="per answer (default 64)")
    parser.add_argument("--timing-prompts", type=int, default=16,
                        help="other held-out prompts, one at a time, for the draft's prefill "
                        "time per image (default 16)")  # fmt: skip
    parser.add_argument(
        "--work", type=pathlib.Path, default=pathlib.Path("/tmp/vispec-toy"), help="scratch"
    )
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    write_results(run(args), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
