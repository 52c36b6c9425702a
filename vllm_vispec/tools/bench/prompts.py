"""The bench's prompt sets: one image and one question per request.

Apart from the runners because both modes ask the very same prompts (offline as PIL images,
``vllm serve`` as PNG data URLs of the same pixels) and other benchmarks load the same sets.
"""

from __future__ import annotations

import base64
import io
import json
import pathlib
from dataclasses import dataclass
from typing import Any

PROMPT_SETS = ("photos", "toy", "grounded", "content")
TOY_SEED = 10_000  # the toy worlds' held-out scenes

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


def write_dataset(prompts: list[Prompt], path: pathlib.Path) -> None:
    """The prompts as a ``vllm bench serve --dataset-name custom_image`` file (one chat per
    line, the images as the same PNG data URLs the serve mode sends)."""
    lines = [json.dumps({"content": p.messages()[0]["content"]}) for p in prompts]
    path.write_text("\n".join(lines) + "\n")


def load_prompts(name: str, n: int) -> list[Prompt]:
    """The distinct prompts of a set (``n``: how many a toy set makes, the largest batch)."""
    if name == "photos":
        return _photos()
    return _world(name, n)


def cycle(items: list[Any], n: int) -> list[Any]:
    """``n`` items, the given ones repeated in order: a batch larger than the prompt set."""
    return [items[i % len(items)] for i in range(n)]


def waves(items: list[Any], batch: int) -> list[list[Any]]:
    """Batches of ``batch`` items that go through every item at least once (cycled past the
    end): a small batch size is timed on the whole prompt set, not on its first prompts."""
    count = -(-len(items) // batch)
    flat = cycle(items, count * batch)
    return [flat[i * batch : (i + 1) * batch] for i in range(count)]


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
    """Held-out scenes of a toy world (``toy``, ``grounded`` or ``content``)."""
    from vllm_vispec.tools.toy import world_module

    world = world_module(name)
    return [Prompt(r["image"], image, q) for r, image, q in world.prompts(n, TOY_SEED)]
