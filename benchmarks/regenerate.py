"""How much faster `vllm-vispec train --regenerate` is through vLLM than through HF transformers.

    python -m vllm_vispec.tools.toy.costly_target models/grounded/target /tmp/grounded-costly
    python benchmarks/regenerate.py --target /tmp/grounded-costly --records 64

Regenerates the answers of ``--records`` conversations of a toy world with its shipped target (or
``--target``, e.g. its cost-realistic copy) twice: HF transformers' ``generate``, one conversation
at a time (the trainer's former path), and vLLM's ``LLM.chat``, all at once (``vllm_answers``, what
the trainer uses now), both greedy. Writes benchmarks/results/regenerate_WORLD.{md,json} with both
times, their ratio and how many answers agree.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import shlex
import sys
import tempfile
import time

from toy_world import DRAFT_SEED, RESULTS, ROOT

from vllm_vispec.tools.toy import WORLDS, world_module


def run(args: argparse.Namespace) -> dict:
    import torch

    from vllm_vispec.tools.train.data import to_messages
    from vllm_vispec.tools.train.teacher import Teacher, vllm_answers

    world = world_module(args.world)
    target = args.target or ROOT / "models" / args.world / "target"
    images = pathlib.Path(tempfile.mkdtemp(prefix="regenerate-"))
    records = world.make_samples(args.records, DRAFT_SEED, images)
    prompts = []
    for record in records:
        messages, pictures = to_messages(record, images)
        prompts.append((messages[:1], pictures))  # the question alone
    start = time.perf_counter()
    with vllm_answers(target, args.max_tokens, bf16=False) as answer:
        started = time.perf_counter()
        fast = answer(prompts)
        vllm_seconds = time.perf_counter() - started
    vllm_total = time.perf_counter() - start
    teacher = Teacher(target, torch.device("cpu"), torch.float32)
    started = time.perf_counter()
    slow = [teacher.answer(m, im, args.max_tokens) for m, im in prompts]
    hf_seconds = time.perf_counter() - started
    return {
        "world": args.world,
        "target": str(target),
        "records": args.records,
        "max_tokens": args.max_tokens,
        "hf_seconds": round(hf_seconds, 2),
        "vllm_seconds": round(vllm_seconds, 2),
        "vllm_seconds_with_engine_start": round(vllm_total, 2),
        "speedup": round(hf_seconds / vllm_seconds, 2),
        "speedup_with_engine_start": round(hf_seconds / vllm_total, 2),
        "same_answers": sum(a == b for a, b in zip(fast, slow, strict=True)),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU",
        "command": shlex.join(["python", *sys.argv]),
        "date": datetime.date.today().isoformat(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--world", choices=WORLDS, default="grounded")
    parser.add_argument("--target", type=pathlib.Path, help="default: the world's shipped target")
    parser.add_argument("--records", type=int, default=32, help="conversations (default 32)")
    parser.add_argument("--max-tokens", type=int, default=64, help="per answer (default 64)")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    r = run(args)
    name = f"regenerate_{r['world']}"
    (args.out / f"{name}.json").write_text(json.dumps(r, indent=1) + "\n")
    (args.out / f"{name}.md").write_text(
        f"# Regenerating training answers: vLLM batched vs HF transformers one at a time\n\n"
        f"Command: `{r['command']}` ({r['date']}, {r['machine']}). {r['records']} conversations "
        f"of the {r['world']} world, target `{r['target']}`, greedy, up to {r['max_tokens']} new "
        f"tokens.\n\n"
        f"| path | seconds | speed-up |\n|---|---|---|\n"
        f"| HF `generate`, one at a time | {r['hf_seconds']} | 1.00x |\n"
        f"| vLLM `LLM.chat`, all at once | {r['vllm_seconds']} | **{r['speedup']}x** |\n"
        f"| the same with the engine's start-up | {r['vllm_seconds_with_engine_start']} | "
        f"{r['speedup_with_engine_start']}x |\n\n"
        f"Identical answers: {r['same_answers']} of {r['records']}.\n"
    )
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
