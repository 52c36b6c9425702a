"""A toy world end to end: a target that looks at images, ViSpec and EAGLE-1 drafts trained
against it with equal budgets, and their acceptance in vLLM on held-out images.

    python benchmarks/toy_world.py            # reuses models/toy/target and drafts in --work
    python benchmarks/toy_world.py --retrain  # everything from scratch (about 40 min on 2 CPUs)
    python benchmarks/toy_world.py --world grounded --prompts 48   # the image-grounded world

Worlds: ``toy`` (:mod:`vllm_vispec.tools.toy.world`, its target trained here) and ``grounded``
(:mod:`vllm_vispec.tools.toy.grounded_world`, its target trained by
benchmarks/train_strip_target.py).
Writes benchmarks/results/WORLD_world.{md,json,png}. The target and the final drafts live in
models/WORLD/ (target/, vispec/, eagle/), which `vllm-vispec demo` uses. Mean acceptance length
is vLLM's: 1 + accepted draft tokens per verification step (ViSpec's tau + 1). Where the drafts
win or lose is shown by their first-step acceptance on image-fact tokens vs the others
(teacher-forced on held-out answers, ``first_step_agreement``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import json
import os
import pathlib
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Iterator
from typing import Any

from vllm_vispec.tools.toy import WORLDS, world_module

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
EVAL_SEED = 10_000  # held out: the target trains on seed 2, the drafts on seed 3
DRAFT_SEED = 3


@dataclasses.dataclass(frozen=True)
class Budget:
    """Draft training: one unit is ``unit_steps`` steps of ``batch_size`` conversations.
    ``num_q``: the ViSpec drafts' adaptor queries (one global feature + num_q - 1 compressed
    image tokens; 2 in the released drafts)."""

    units: tuple[int, ...] = (1, 2, 4, 8)
    unit_steps: int = 100
    batch_size: int = 8
    samples: int = 3000
    lr: float = 2e-3
    num_q: int = 2


def _prompts(world: Any, n: int, seed: int = EVAL_SEED) -> list[tuple[dict, Any]]:
    """Held-out (record, chat) pairs: image + question, the description kept for scoring."""
    return [
        (
            record,
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_pil", "image_pil": image},
                        {"type": "text", "text": question},
                    ],
                }
            ],
        )
        for record, image, question in world.prompts(n, seed)
    ]


@contextlib.contextmanager
def offline_engine(target: pathlib.Path, max_num_seqs: int, spec: dict | None) -> Iterator[Any]:
    """A vllm.LLM on the target (with ``spec`` as its speculative_config), shut down after."""
    from vllm import LLM

    from vllm_vispec.tools.bench.cpu_engine import cpu_engine_kwargs

    extra = {"speculative_config": spec} if spec else {}
    llm = LLM(
        model=str(target),
        disable_log_stats=False,
        **cpu_engine_kwargs(max_num_seqs=max_num_seqs, **extra),
    )
    try:
        yield llm
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()


def generate(
    target: pathlib.Path, chats: list, max_tokens: int, spec: dict | None
) -> tuple[list[list[int]], list[str], dict[str, Any]]:
    """Greedy answers of one engine, and its spec-decode acceptance over the run."""
    from vllm import SamplingParams

    from vllm_vispec.tools.bench.offline import offline_counters
    from vllm_vispec.tools.bench.report import acceptance

    with offline_engine(target, len(chats), spec) as llm:
        before = offline_counters(llm)
        outputs = llm.chat(chats, SamplingParams(temperature=0, max_tokens=max_tokens))
        after = offline_counters(llm)
    ids = [list(o.outputs[0].token_ids) for o in outputs]
    texts = [o.outputs[0].text for o in outputs]
    return ids, texts, acceptance(before, after) if after else {}


def train_drafts(
    world: Any, target: pathlib.Path, work: pathlib.Path, budget: Budget
) -> dict[tuple[str, int], pathlib.Path]:
    """ViSpec and EAGLE-1 drafts for every budget, same data, steps, batch and recipe."""
    from vllm_vispec.tools.train.trainer import TrainConfig, train

    images = work / "draft_images"
    data = work / "draft_data.json"
    data.write_text(json.dumps(world.make_samples(budget.samples, DRAFT_SEED, images)))
    drafts = {}
    for kind in ("vispec", "eagle"):
        for units in budget.units:
            out = work / "drafts" / f"{kind}-{units}u"
            if kind == "vispec":
                out = out.with_name(f"{out.name}-q{budget.num_q}")
            if (out / "final" / "config.json").exists():  # trained by an earlier run
                drafts[kind, units] = out / "final"
                continue
            shutil.rmtree(out, ignore_errors=True)
            print(f"training the {kind} draft for {units} unit(s) ...", flush=True)
            drafts[kind, units] = train(
                TrainConfig(
                    target=target,
                    data=[data],
                    image_root=images,
                    out=out,
                    draft=kind,
                    num_q=budget.num_q,
                    max_steps=units * budget.unit_steps,
                    batch_size=budget.batch_size,
                    lr=budget.lr,
                    warmup_ratio=0.1,
                )
            )
    return drafts


def first_step_by_kind(
    world: Any, target: pathlib.Path, drafts: dict[str, pathlib.Path], work: pathlib.Path, n: int
) -> dict[str, dict[str, float]]:
    """Per draft, teacher-forced first-step acceptance on image-fact answer tokens and on the
    others, over ``n`` held-out conversations (the reference descriptions)."""
    import torch
    from transformers import AutoTokenizer

    from vllm_vispec.tools.train.trainer import first_step_agreement

    images = work / "eval_images"
    data = work / "eval_data.json"
    data.write_text(json.dumps(world.make_samples(n, EVAL_SEED, images)))
    tokenizer = AutoTokenizer.from_pretrained(target)
    out = {}
    for kind, draft in drafts.items():
        ids, agree = first_step_agreement(target, draft, kind, [data], images)
        fact = torch.tensor([world.fact_token(tokenizer.decode([int(t)])) for t in ids])
        out[kind] = {
            "image_fact": round(float(agree[fact].float().mean()), 4),
            "other": round(float(agree[~fact].float().mean()), 4),
            "all": round(float(agree.float().mean()), 4),
            "image_fact_share": round(float(fact.float().mean()), 4),
        }
        print(kind, out[kind], flush=True)
    return out


def check_target(world: str, target: pathlib.Path) -> None:
    """A strip world's target is trained by benchmarks/train_strip_target.py, not here."""
    if not (target / "config.json").exists():
        raise SystemExit(
            f"no target in {target}: train it with python benchmarks/train_strip_target.py "
            f"--world {world} --work DIR"
        )


def run(args: argparse.Namespace) -> dict[str, Any]:
    world = world_module(args.world)
    work = args.work / args.world
    work.mkdir(parents=True, exist_ok=True)
    models = ROOT / "models" / args.world
    target = models / "target"
    started = time.perf_counter()
    if args.world == "toy" and (args.retrain or not (target / "config.json").exists()):
        from vllm_vispec.tools.toy.target import TargetRecipe, train_toy_target

        shutil.rmtree(target, ignore_errors=True)
        train_toy_target(target, work, TargetRecipe())
    check_target(args.world, target)
    prompts = _prompts(world, args.prompts)
    chats = [c for _, c in prompts]
    base_ids, base_texts, _ = generate(target, chats, args.max_tokens, None)
    scenes = [world.scene_from_dict(r["scene"]) for r, _ in prompts]
    scores = [world.score(scene, text) for scene, text in zip(scenes, base_texts, strict=True)]
    training = json.loads(next(target.glob("*_training.json")).read_text())
    result: dict[str, Any] = {
        "world": args.world,
        "target_training": {k: training[k] for k in ("recipe", "steps", "seconds")},
        "target_accuracy": sum(scores) / len(scores),
        "sample_answer": base_texts[0],
        "sample_reference": prompts[0][0]["conversations"][1]["value"],
    }
    print(f"target accuracy on {len(scores)} held-out images: {result['target_accuracy']:.3f}")
    if args.accuracy_only:
        return result

    budget = Budget(num_q=args.num_q)
    if args.retrain:
        shutil.rmtree(work / "drafts", ignore_errors=True)
    drafts = train_drafts(world, target, work, budget)
    finals = {kind: drafts[kind, max(budget.units)] for kind in ("vispec", "eagle")}
    if budget.num_q == Budget.num_q:  # the released layout's full-budget drafts ship
        for kind, final in finals.items():
            shutil.rmtree(models / kind, ignore_errors=True)
            shutil.copytree(final, models / kind, ignore=shutil.ignore_patterns("trainer_state"))
    result["first_step"] = first_step_by_kind(world, target, finals, work, args.prompts)

    rows = []

    def measure(method: str, k: int, units: int | None, spec: dict) -> None:
        ids, _, acc = generate(
            target, chats, args.max_tokens, {**spec, "num_speculative_tokens": k}
        )
        rows.append(
            {
                "method": method,
                "k": k,
                "units": units,
                "mean_acceptance_length": acc.get("mean_acceptance_length"),
                "acceptance_per_pos": acc.get("acceptance_per_pos"),
                "lossless": ids == base_ids,
            }
        )
        print(rows[-1], flush=True)

    ngram = {"method": "ngram", "prompt_lookup_max": 4, "prompt_lookup_min": 2}
    for k in (3, 5):
        measure("ngram", k, None, ngram)
        for kind in ("eagle", "vispec"):
            draft = drafts[kind, max(budget.units)]
            measure(kind, k, max(budget.units), {"method": "eagle", "model": str(draft)})
    for (kind, units), draft in sorted(drafts.items()):
        if units != max(budget.units):
            measure(kind, 3, units, {"method": "eagle", "model": str(draft)})
    result.update(
        rows=rows,
        budget=dataclasses.asdict(budget),
        prompts=args.prompts,
        max_tokens=args.max_tokens,
        seconds=round(time.perf_counter() - started),
        machine=f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU",
        command=shlex.join(["python", *sys.argv]),
        date=datetime.date.today().isoformat(),
    )
    return result


def write_results(result: dict[str, Any], out: pathlib.Path) -> None:
    """WORLD_world.json, a Markdown table and the training-budget plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    num_q = result["budget"].get("num_q", Budget.num_q)
    name = f"{result['world']}_world" + ("" if num_q == Budget.num_q else f"_q{num_q}")
    (out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    rows = result["rows"]
    t, b = result["target_training"], result["budget"]
    full = max(b["units"])

    def mal(method: str, k: int, units: int | None) -> float:
        row = next(r for r in rows if (r["method"], r["k"], r["units"]) == (method, k, units))
        return row["mean_acceptance_length"] or 1.0

    lines = [
        f"# {result['world'].capitalize()} world: acceptance of ViSpec vs EAGLE-1 vs ngram in vLLM",
        "",
        f"Command: `{result['command']}` ({result['date']}, {result['machine']}, "
        f"{result['seconds']} s). Held-out images: {result['prompts']}, greedy, up to "
        f"{result['max_tokens']} tokens each.",
        "",
        f"Target: tiny Qwen2.5-VL ({t['recipe']['hidden_size']} hidden, "
        f"{t['recipe']['num_layers']} layers) trained from scratch for {t['steps']} steps "
        f"({t['seconds'] / 60:.1f} min). Accuracy on the held-out images (fraction of scene facts "
        f"its greedy descriptions get right, `score` of the world's module): "
        f"**{result['target_accuracy']:.3f}**",
        "",
        f"Drafts: ViSpec and EAGLE-1, same data ({b['samples']} conversations of the world), "
        f"recipe specvlm, batch {b['batch_size']}, lr {b['lr']}; one budget unit = "
        f"{b['unit_steps']} steps; ViSpec num_q {b.get('num_q', Budget.num_q)}.",
        "",
        "| method | K | training units | mean acceptance length | per position | lossless |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        per_pos = "/".join(f"{p:.2f}" for p in r["acceptance_per_pos"] or [])
        lines.append(
            f"| {r['method']} | {r['k']} | {r['units'] or '-'} | "
            f"{r['mean_acceptance_length'] or 1.0:.2f} | {per_pos} | {r['lossless']} |"
        )
    ratios = {k: mal("vispec", k, full) / mal("eagle", k, full) for k in (3, 5)}
    lines += [
        "",
        f"ViSpec / EAGLE-1 mean acceptance length at equal budget ({full} units): "
        f"K=3 **{ratios[3]:.2f}x**, K=5 **{ratios[5]:.2f}x** (goal: 1.3x).",
        "",
    ]
    first = result.get("first_step")
    if first:
        share = first["vispec"]["image_fact_share"]
        lines += [
            "Where the difference comes from: first-step acceptance (the draft's first token "
            "equals the target's greedy token, teacher-forced on the held-out reference answers), "
            f"on image-fact tokens (counts, colours, shapes, ...: {share:.0%} of answer tokens) "
            "and on the others.",
            "",
            "| draft | image-fact tokens | other tokens | all |",
            "|---|---|---|---|",
            *[
                f"| {kind} | {v['image_fact']:.3f} | {v['other']:.3f} | {v['all']:.3f} |"
                for kind, v in first.items()
            ],
            "",
        ]
    lines += [f"![acceptance vs training budget]({name}.png)", ""]
    (out / f"{name}.md").write_text("\n".join(lines))
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for kind in ("vispec", "eagle"):
        units = sorted(r["units"] for r in rows if r["method"] == kind and r["k"] == 3)
        ax.plot(units, [mal(kind, 3, u) for u in units], marker="o", label=kind)
    ax.axhline(mal("ngram", 3, None), color="grey", linestyle="--", label="ngram")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training budget (units)")
    ax.set_ylabel("mean acceptance length (K=3)")
    ax.set_title(f"{result['world'].capitalize()} world: acceptance vs training budget")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--world", choices=WORLDS, default="toy", help="which world (default toy)")
    parser.add_argument(
        "--retrain", action="store_true", help="retrain the drafts (and the toy target)"
    )
    parser.add_argument("--accuracy-only", action="store_true", help="only score the target")
    parser.add_argument(
        "--num-q",
        type=int,
        default=Budget.num_q,
        help="ViSpec adaptor queries (default 2, as released; other values write "
        "WORLD_world_qN.* and ship no drafts)",
    )
    parser.add_argument("--prompts", type=int, default=16, help="held-out images (default 16)")
    parser.add_argument("--max-tokens", type=int, default=192, help="per answer (default 192)")
    parser.add_argument(
        "--work",
        type=pathlib.Path,
        default=pathlib.Path.home() / ".cache" / "vllm-vispec" / "toy-world",
        help="scratch folder for images, data and draft runs",
    )
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    result = run(args)
    if not args.accuracy_only:
        write_results(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
