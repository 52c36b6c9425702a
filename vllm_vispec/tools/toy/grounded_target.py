"""The strip worlds' targets: a tiny Qwen2.5-VL trained from scratch, resumably, on a CPU.

The strip worlds are :mod:`vllm_vispec.tools.toy.grounded_world` and
:mod:`vllm_vispec.tools.toy.content_world` (``GroundedRecipe.world``).

:mod:`vllm_vispec.tools.toy.target` trains once, in one go, on a fixed sample set written to disk.
Training a target that really reads :mod:`vllm_vispec.tools.toy.grounded_world` strips takes longer
than one session may want to wait, so this trainer

* draws its training strips on the fly, seeded by ``(seed, step, index)``: the data is
  deterministic and unlimited, and a resumed run sees exactly the batches it would have seen;
* writes the model (an HF folder that transformers and vLLM load), the optimizer, scheduler and
  step (``train_state.pt``) every ``checkpoint_every`` steps and at the end, and appends its
  progress (mean loss, learning rate, training seconds, evaluations) to ``progress.jsonl``;
* continues from the last checkpoint when asked to resume.

Loss is next-token cross entropy on the answers only, as in :mod:`vllm_vispec.tools.toy.target`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vllm_vispec.tools.toy import world_module
from vllm_vispec.tools.toy.grounded_world import EVAL_CELLS

STATE_FILE = "train_state.pt"
PROGRESS_FILE = "progress.jsonl"
RECIPE_FILE = "grounded_recipe.json"


@dataclasses.dataclass(frozen=True)
class GroundedRecipe:
    """Target size and training schedule. ``max_steps`` sets the cosine schedule's length;
    ``max_minutes`` only bounds one invocation (resume to continue).

    ``rope_theta`` replaces the tiny target's text RoPE base (1e6, Qwen's). With head_dim 32
    and M-RoPE sections [4, 6, 6] the width section gets the 6 lowest frequencies, which at
    base 1e6 turn by under 0.01 radian across a 32-token-wide image: the text model cannot tell
    image columns apart. At base 5 they are 0.22-0.37 radian per position, enough to attend to
    the column a few tokens wide that an answer token describes.

    ``vision_depth`` / ``vision_hidden`` size the vision tower (the tiny builder's: 2 blocks of
    64); every second block attends to the full image, the others to 112-pixel windows.

    ``world``: ``grounded`` or ``content``, the strip world the target learns.

    ``small_steps`` / ``small_share``: the first ``small_steps`` steps train on strips of one or
    two cells only, later steps on a ``small_share`` of them (evaluation always uses
    ``EVAL_CELLS``). In a one-cell strip the whole image is the cell described, so the vision
    tower and the path from image tokens to counts and shapes are learned before any attention
    has to find a cell by its content (the content world's obstacle).
    """

    hidden_size: int = 128
    num_heads: int = 4
    num_layers: int = 2
    rope_theta: float = 5.0
    vision_depth: int = 2
    vision_hidden: int = 64
    n_cells: int = EVAL_CELLS
    batch_size: int = 8
    lr: float = 2e-3
    warmup_steps: int = 100
    max_steps: int = 3000
    checkpoint_every: int = 200
    log_every: int = 25
    seed: int = 0
    world: str = "grounded"
    small_steps: int = 0
    small_share: float = 0.0


def messages(question: str, answer: str | None = None) -> list[dict[str, Any]]:
    """Chat messages of one strip conversation (image first, then the question)."""
    out: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
    ]
    if answer is not None:
        out.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return out


def training_batch(processor: Any, recipe: GroundedRecipe, step: int, expansions: dict) -> dict:
    """The model inputs (plus ``labels``) of training step ``step``: fresh seeded strips."""
    from vllm_vispec.tools.train.data import collate, encode

    world = world_module(recipe.world)
    examples = []
    for i in range(recipe.batch_size):
        rng = random.Random(f"grounded-train:{recipe.seed}:{step}:{i}")
        small = step < recipe.small_steps or (
            recipe.small_share > 0 and rng.random() < recipe.small_share  # no draw at 0
        )
        scene = world.random_scene(rng, rng.randint(1, 2) if small else recipe.n_cells)
        examples.append(
            encode(processor, messages(world.question(scene), world.describe(scene)),
                   [world.render(scene)], f"{step}:{i}", expansions)
        )  # fmt: skip
    batch = collate(processor, examples)
    mask = batch.pop("loss_mask")
    batch["labels"] = batch["input_ids"].masked_fill(~mask, -100)
    return batch


@torch.no_grad()
def evaluate(
    model: Any,
    processor: Any,
    n: int,
    seed: int,
    n_cells: int = EVAL_CELLS,
    batch_size: int = 16,
    world: str = "grounded",
) -> dict[str, Any]:
    """Greedy HF answers about ``n`` held-out strips of ``world``: its mean ``score`` and
    per-kind accuracy."""
    w = world_module(world)
    was_training = model.training
    model.eval()
    processor.tokenizer.padding_side = "left"
    items = w.prompts(n, seed, n_cells)
    scores, kinds, texts = [], dict.fromkeys(("count", "colour", "shape"), 0.0), []
    image_tokens = None
    for start in range(0, n, batch_size):
        chunk = items[start : start + batch_size]
        text = [
            processor.apply_chat_template(messages(q), tokenize=False, add_generation_prompt=True)
            for _, _, q in chunk
        ]
        batch = processor(text=text, images=[im for _, im, _ in chunk], padding=True,
                          return_tensors="pt")  # fmt: skip
        image_tokens = int((batch["input_ids"][0] == model.config.image_token_id).sum())
        out = model.generate(**batch, max_new_tokens=4 * n_cells + 8, do_sample=False)
        answers = processor.batch_decode(
            out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True
        )
        for (record, _, _), answer in zip(chunk, answers, strict=True):
            scene = w.scene_from_dict(record["scene"])
            scores.append(w.score(scene, answer))
            for k, v in w.fact_accuracy(scene, answer).items():
                kinds[k] += v / n
            texts.append({"truth": record["conversations"][1]["value"], "answer": answer})
    model.train(was_training)
    return {
        "n": n,
        "n_cells": n_cells,
        "image_tokens": image_tokens,
        "accuracy": round(sum(scores) / len(scores), 4),
        "by_kind": {k: round(v, 4) for k, v in kinds.items()},
        "examples": texts[:3],
    }


def _customise(out: Path, recipe: GroundedRecipe) -> None:
    """Apply the recipe's RoPE base and vision tower size to the freshly built target at ``out``
    (new weights, initialised like the builder's, only if the vision tower changes)."""
    from transformers import AutoTokenizer, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from vllm_vispec.tools.testing.tiny_targets import finish, save_model
    from vllm_vispec.tools.testing.tiny_tokenizers import QWEN_SPECIAL_TOKENS

    config = Qwen2_5_VLConfig.from_pretrained(out)
    config.text_config.rope_parameters["rope_theta"] = recipe.rope_theta
    vision = config.vision_config
    if (vision.depth, vision.hidden_size) == (recipe.vision_depth, recipe.vision_hidden):
        config.save_pretrained(out)
    else:
        vision.depth = recipe.vision_depth
        vision.hidden_size = recipe.vision_hidden
        vision.intermediate_size = 2 * recipe.vision_hidden
        vision.num_heads = max(1, recipe.vision_hidden // 32)
        vision.fullatt_block_indexes = list(range(1, recipe.vision_depth, 2)) or [0]
        tokenizer = AutoTokenizer.from_pretrained(out)
        never = [tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS
                 if "vision" in t or "pad" in t]  # fmt: skip
        save_model(Qwen2_5_VLForConditionalGeneration, config, out, recipe.seed, never)
    finish(out)


def _truncate_progress(out: Path, step: int) -> None:
    """Drop progress entries logged after the checkpoint at ``step``: they will be redone."""
    file = out / PROGRESS_FILE
    if file.is_file():
        lines = [x for x in file.read_text().splitlines() if x.strip()]
        kept = [x for x in lines if json.loads(x)["step"] <= step]
        file.write_text("".join(x + "\n" for x in kept))


def _append(out: Path, entry: dict[str, Any]) -> None:
    with (out / PROGRESS_FILE).open("a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def _save(out: Path, model: Any, state: dict[str, Any]) -> None:
    """Write weights and training state to a scratch folder, then move them in place."""
    tmp = out / ".checkpoint-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model.save_pretrained(tmp)
    torch.save(state, tmp / STATE_FILE)
    for name in ("model.safetensors", STATE_FILE):  # the state last: it marks a complete save
        os.replace(tmp / name, out / name)
    shutil.rmtree(tmp, ignore_errors=True)


def train_grounded_target(
    out: Path,
    recipe: GroundedRecipe = GroundedRecipe(),
    max_minutes: float = 30.0,
    resume: bool = True,
    evaluate_every: int = 0,
    on_eval: Callable[[Any, Any, int], dict[str, Any]] | None = None,
) -> Path:
    """Train (or, with ``resume`` and a checkpoint in ``out``, continue) the target at ``out``.

    Stops at ``recipe.max_steps`` or after ``max_minutes`` of this invocation, saving a
    checkpoint either way. Every ``evaluate_every`` steps (0: never) ``on_eval(model, processor,
    step)`` runs and its result is appended to the progress log.
    """
    from tqdm import tqdm
    from transformers import (
        AutoModelForImageTextToText,
        AutoProcessor,
        get_cosine_schedule_with_warmup,
    )

    from vllm_vispec.tools.testing.tiny_targets import build_tiny_qwen2_5_vl

    out = Path(out)
    state_file = out / STATE_FILE
    if resume and state_file.is_file():
        saved = json.loads((out / RECIPE_FILE).read_text())
        saved = {**dataclasses.asdict(GroundedRecipe()), **saved}  # fields added since
        if saved != dataclasses.asdict(recipe):
            raise ValueError(
                f"{out} was trained with a different recipe {saved}; pass the same options "
                "(or a new --work folder)"
            )
        state = torch.load(state_file, weights_only=False)
        _truncate_progress(out, state["step"])
    else:
        if out.exists():
            shutil.rmtree(out)
        build_tiny_qwen2_5_vl(
            out,
            seed=recipe.seed,
            hidden_size=recipe.hidden_size,
            num_heads=recipe.num_heads,
            num_layers=recipe.num_layers,
            extra_corpus=world_module(recipe.world).tokenizer_corpus(recipe.seed + 1),
            init_std=0.02,
        )
        _customise(out, recipe)
        (out / RECIPE_FILE).write_text(json.dumps(dataclasses.asdict(recipe), indent=1) + "\n")
        (out / PROGRESS_FILE).unlink(missing_ok=True)
        state = None

    torch.manual_seed(recipe.seed)
    processor = AutoProcessor.from_pretrained(out)
    model = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.01)
    scheduler = get_cosine_schedule_with_warmup(optimizer, recipe.warmup_steps, recipe.max_steps)
    step, seconds = 0, 0.0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, seconds = state["step"], state["seconds"]
        torch.set_rng_state(state["torch_rng"])

    def checkpoint() -> None:
        _save(out, model, {"optimizer": optimizer.state_dict(),
                           "scheduler": scheduler.state_dict(), "step": step,
                           "seconds": seconds, "torch_rng": torch.get_rng_state()})  # fmt: skip

    model.train()
    expansions: dict[tuple, int] = {}
    started = time.perf_counter()
    losses: list[float] = []
    bar = tqdm(total=recipe.max_steps, initial=step, desc=f"{recipe.world} target", unit="step")
    while step < recipe.max_steps:
        t0 = time.perf_counter()
        batch = training_batch(processor, recipe, step, expansions)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        step += 1
        seconds += time.perf_counter() - t0
        losses.append(loss.item())
        bar.update()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % recipe.log_every == 0:
            mean = round(sum(losses) / len(losses), 4)
            lr = scheduler.get_last_lr()[0]
            _append(out, {"step": step, "loss": mean, "lr": lr, "seconds": round(seconds, 1)})
            losses = []
        done = step >= recipe.max_steps
        out_of_time = time.perf_counter() - started > max_minutes * 60
        if step % recipe.checkpoint_every == 0 or done or out_of_time:
            checkpoint()
        if on_eval is not None and evaluate_every and (step % evaluate_every == 0 or done):
            result = on_eval(model, processor, step)
            _append(out, {"step": step, "seconds": round(seconds, 1), "eval": result})
        if out_of_time:
            break
    bar.close()
    return out
