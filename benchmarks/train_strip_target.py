"""Train (or resume) a strip world's target, measure its held-out accuracy, ship it.

    OMP_NUM_THREADS=1 python benchmarks/train_strip_target.py --work /tmp/grounded/run
    OMP_NUM_THREADS=1 python benchmarks/train_strip_target.py --world content --work /tmp/content
    # interrupted or out of --minutes? the same command continues from the last checkpoint

The target (a tiny Qwen2.5-VL, :mod:`vllm_vispec.tools.toy.grounded_target`) trains on fresh seeded
strips of the world (:mod:`vllm_vispec.tools.toy.grounded_world` or
:mod:`~vllm_vispec.tools.toy.content_world`); every ``--eval-every`` steps and at the end its
greedy HF
transformers answers about ``--eval-n`` held-out strips (8 cells, 896x224 pixels, 256 image
tokens) are scored with the world's ``score``. The work folder holds the model (an HF folder),
``train_state.pt`` and ``progress.jsonl``. When training has reached ``--max-steps`` the model
(without the optimizer state) is copied to ``--models`` (default ``models/WORLD/target``, which
benchmarks/toy_world.py --world WORLD and the demo use) with ``grounded_training.json``, and the
results go to ``--out``/WORLD_target.{md,json}.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import pathlib
import platform
import shlex
import shutil
import sys
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

EVAL_SEED = 20_000
"""Held-out strips; training strips are seeded by (seed, step, index) strings, never this."""


def main(argv: list[str] | None = None) -> int:
    from vllm_vispec.tools.toy.grounded_target import GroundedRecipe

    defaults = GroundedRecipe()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=pathlib.Path, required=True,
                        help="output folder: model, checkpoint, progress log, results")  # fmt: skip
    parser.add_argument("--fresh", action="store_true",
                        help="start over even if --work holds a checkpoint")  # fmt: skip
    parser.add_argument("--minutes", type=float, default=30.0,
                        help="stop this run after this many minutes (resume later)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--eval-every", type=int, default=500, help="steps between evaluations")
    parser.add_argument("--eval-n", type=int, default=32, help="held-out strips per evaluation")
    parser.add_argument("--final-eval-n", type=int, default=128,
                        help="held-out strips for the final evaluation")  # fmt: skip
    parser.add_argument("--eval-only", action="store_true",
                        help="only evaluate the model in --work")  # fmt: skip
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS,
                        help="results folder (default %(default)s)")  # fmt: skip
    parser.add_argument("--models", type=pathlib.Path,
                        help="finished target (default models/WORLD/target)")  # fmt: skip
    for field in dataclasses.fields(GroundedRecipe):
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(field.default),
                            default=getattr(defaults, field.name),
                            help=f"recipe: {field.name} (default %(default)s)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.world not in ("grounded", "content"):
        parser.error(f"--world {args.world}: strip worlds are grounded and content")

    import torch

    torch.set_num_threads(args.threads)
    from vllm_vispec.tools.toy.grounded_target import evaluate, train_grounded_target

    recipe = GroundedRecipe(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(GroundedRecipe)}
    )
    work = args.work

    def on_eval(model, processor, step: int, n: int = args.eval_n) -> dict:
        t0 = time.perf_counter()
        result = evaluate(model, processor, n, EVAL_SEED, world=recipe.world)
        result["eval_seconds"] = round(time.perf_counter() - t0, 1)
        print(f"step {step}: held-out accuracy {result['accuracy']:.3f} {result['by_kind']}",
              flush=True)  # fmt: skip
        return result

    if not args.eval_only:
        train_grounded_target(
            work,
            recipe,
            max_minutes=args.minutes,
            resume=not args.fresh,
            evaluate_every=args.eval_every,
            on_eval=on_eval,
        )
    from transformers import AutoModelForImageTextToText, AutoProcessor

    recipe = GroundedRecipe(**json.loads((work / "grounded_recipe.json").read_text()))
    processor = AutoProcessor.from_pretrained(work)
    model = AutoModelForImageTextToText.from_pretrained(work, dtype=torch.float32)
    final = on_eval(model, processor, -1, args.final_eval_n)
    state = torch.load(work / "train_state.pt", weights_only=False)
    history = [
        json.loads(line)
        for line in (work / "progress.jsonl").read_text().splitlines()
        if line.strip()
    ]
    evals = [(h["step"], h["seconds"], h["eval"]["accuracy"]) for h in history if "eval" in h]
    result = {
        "command": " ".join(shlex.quote(a) for a in sys.argv),
        "machine": f"{platform.machine()}, torch threads {args.threads}",
        "recipe": dataclasses.asdict(recipe),
        "steps": state["step"],
        "train_minutes": round(state["seconds"] / 60, 1),
        "final": final,
        "evaluations": [{"step": s, "train_seconds": t, "accuracy": a} for s, t, a in evals],
    }
    if state["step"] < recipe.max_steps:
        print(f"step {state['step']} of {recipe.max_steps}: run the same command to continue")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"{recipe.world}_target"
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"# {recipe.world.capitalize()} world: held-out accuracy of the target",
        "",
        f"Command: `{result['command']}` ({result['machine']}, {datetime.date.today()}); "
        f"training is `python benchmarks/train_strip_target.py --work DIR{_options(recipe)}` "
        "(resumable: the same command continues).",
        f"Target: hidden {recipe.hidden_size}, {recipe.num_layers} layers, batch "
        f"{recipe.batch_size}, lr {recipe.lr}; {state['step']} steps, "
        f"{result['train_minutes']} training minutes.",
        f"Held-out: {final['n']} strips of {final['n_cells']} cells, {final['image_tokens']} "
        "image tokens each, HF greedy decoding.",
        "",
        f"Evaluations during training: {args.eval_n} held-out strips each.",
        "",
        "| step | training minutes | accuracy |",
        "|---|---|---|",
        *[f"| {s} | {t / 60:.1f} | {a:.3f} |" for s, t, a in evals],
        "",
        f"Final accuracy on {final['n']} held-out strips **{final['accuracy']:.3f}** (by kind: "
        f"{final['by_kind']}). Text alone can do no better than chance on the image facts "
        "(count 1/3, shape 1/6; colour 1/8 in the grounded world, where it is an image fact).",
        "",
        "Examples (truth / answer):",
        "",
        *[f"- `{e['truth']}`\n  `{e['answer']}`" for e in final["examples"]],
    ]
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")
    models = args.models or ROOT / "models" / recipe.world / "target"
    ship(work, models, result)
    print(f"final held-out accuracy {final['accuracy']:.3f}; target in {models}, results "
          f"in {args.out / name}.md")  # fmt: skip
    return 0


def _options(recipe: Any) -> str:
    """The command-line options that give ``recipe`` (those off the defaults)."""
    defaults = dataclasses.asdict(type(recipe)())
    return "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in dataclasses.asdict(recipe).items()
        if v != defaults[k]
    )  # fmt: skip


def ship(work: pathlib.Path, dst: pathlib.Path, result: dict) -> None:
    """The trained model without its optimizer state, with a summary of how it was trained."""
    shutil.rmtree(dst, ignore_errors=True)
    keep = shutil.ignore_patterns("train_state.pt", "progress.jsonl", "result.*", ".checkpoint-tmp")
    shutil.copytree(work, dst, ignore=keep)
    summary = {
        "recipe": result["recipe"],
        "steps": result["steps"],
        "seconds": round(result["train_minutes"] * 60),
        "held_out_accuracy": result["final"]["accuracy"],
    }
    (dst / "grounded_training.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
