"""The toy world's target: a tiny Qwen2.5-VL trained from scratch to describe toy scenes.

Random tiny targets do not look at their images, so a vision-aware draft has nothing to gain
on them. This target is trained (next-token loss on the answers only) on
:mod:`vllm_vispec.tools.toy.world` scenes until its greedy descriptions are mostly right, within a
CPU budget of minutes; its tokenizer is trained with the toy descriptions so they stay short.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from pathlib import Path

import torch

from vllm_vispec.tools.toy.world import IMAGE_SIZE, QUESTIONS, describe, make_samples, random_scene


@dataclasses.dataclass(frozen=True)
class TargetRecipe:
    """Size and training budget of the toy target (defaults: about 15 minutes on 2 CPU cores)."""

    hidden_size: int = 128
    num_heads: int = 4
    num_layers: int = 2
    samples: int = 20000
    image_size: int = IMAGE_SIZE
    batch_size: int = 8
    lr: float = 2e-3
    max_steps: int = 6000
    max_minutes: float = 15.0
    seed: int = 0


def _tokenizer_corpus(seed: int, n: int = 2000) -> list[str]:
    rng = random.Random(seed)
    return [describe(random_scene(rng), rng) for _ in range(n)] + list(QUESTIONS)


def train_toy_target(out: Path, work: Path, recipe: TargetRecipe = TargetRecipe()) -> Path:
    """Build the untrained target at ``out``, train it on fresh toy samples, save it there."""
    from tqdm import tqdm
    from transformers import (
        AutoModelForImageTextToText,
        AutoProcessor,
        get_cosine_schedule_with_warmup,
    )

    from vllm_vispec.tools.testing.tiny_targets import build_tiny_qwen2_5_vl
    from vllm_vispec.tools.train.data import batch_indices, build_examples, collate

    torch.manual_seed(recipe.seed)
    build_tiny_qwen2_5_vl(
        out,
        seed=recipe.seed,
        hidden_size=recipe.hidden_size,
        num_heads=recipe.num_heads,
        num_layers=recipe.num_layers,
        extra_corpus=_tokenizer_corpus(recipe.seed + 1),
        init_std=0.02,
    )
    processor = AutoProcessor.from_pretrained(out)
    model = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32)
    images = work / "target_train_images"
    records = make_samples(recipe.samples, recipe.seed + 2, images, recipe.image_size)
    examples, report = build_examples(records, processor, images, max_length=4096)
    if report.skipped:
        raise RuntimeError(f"toy samples failed to encode: {report}")

    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.01)
    scheduler = get_cosine_schedule_with_warmup(optimizer, 100, recipe.max_steps)
    model.train()
    started = time.perf_counter()
    log = []
    bar = tqdm(total=recipe.max_steps, desc="training the toy target", unit="step")
    for step in range(recipe.max_steps):
        chosen = batch_indices(len(examples), step, recipe.batch_size, recipe.seed)
        batch = collate(processor, [examples[i] for i in chosen])
        mask = batch.pop("loss_mask")
        labels = batch["input_ids"].masked_fill(~mask, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        bar.update()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        log.append(round(loss.item(), 4))
        if time.perf_counter() - started > recipe.max_minutes * 60:
            break
    bar.close()
    model.save_pretrained(out)
    (out / "toy_training.json").write_text(
        json.dumps(
            {
                "recipe": dataclasses.asdict(recipe),
                "steps": len(log),
                "seconds": round(time.perf_counter() - started, 1),
                "loss": log[:: max(1, len(log) // 100)],
            },
            indent=1,
        )
        + "\n"
    )
    return out
