"""A strongly image-grounded toy world: a strip of cells, described cell by cell, left to right.

:mod:`vllm_vispec.tools.toy.world` failed as a test bed for vision-aware drafting: a tiny Qwen2.5-VL
trained on it for 12 CPU minutes got only 18% of scene facts right (it confused shapes and
positions), and its answers were so templated that n-gram drafting reached acceptance length 2.5.
A draft that sees the image then has little to win over one that does not.

This world is built so that a tiny model can *read* every fact locally, and so that almost every
answer token is an image fact:

* An image is a horizontal strip of ``n_cells`` cells, each :data:`CELL_WIDTH` (112) pixels wide
  and :data:`HEIGHT` (224) high, on a plain grey background, with cell edges on the 28-pixel
  grid of Qwen2.5-VL's 2x2-merged patches. A cell shows one, two or three copies (stacked
  vertically) of one shape in one colour. 8 cells (896x224 pixels) give 32x8 = 256 image tokens.
* The answer names the cells in reading order, ``"two red circles, one blue star, ..."``: count,
  colour and shape of each cell. With the tiny target's tokenizer each cell's phrase is exactly
  :data:`TOKENS_PER_CELL` (4) tokens, the width of a cell in merged image tokens, so answer token
  ``k`` belongs to the image column ``k`` (plus a constant): under M-RoPE the target can find
  the cell it is describing by a fixed relative offset, which a 2-layer model learns quickly.
  (Free-form positions on a 2-D grid, as in :mod:`~vllm_vispec.tools.toy.world`, need absolute
  addressing that rotary attention makes hard for a tiny model.)
* The order and content of the facts is random per image, so text alone cannot predict them: 3
  of every 4 answer tokens are image facts and only the commas are template.

:func:`score` is the fraction of the scene's facts (count, colour and shape of every cell, in
order) the text gets right; phrases beyond the last cell count as wrong facts. Everything is pure
Python and PIL and deterministic: the same seed gives the same records and identical PNG bytes.
"""

from __future__ import annotations

import dataclasses
import pathlib
import random
import re
import sys
import tempfile
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from PIL import Image, ImageDraw

from vllm_vispec.tools.toy.world import COLOUR_RGB, COLOURS, NUMBER_WORDS, SHAPES, draw_shape

__all__ = [
    "BACKGROUND_RGB",
    "CELL_WIDTH",
    "COLOURS",
    "COUNTS",
    "EVAL_CELLS",
    "HEIGHT",
    "QUESTION",
    "SHAPES",
    "TOKENS_PER_CELL",
    "Cell",
    "StripScene",
    "describe",
    "fact_token",
    "image_size",
    "image_tokens",
    "make_samples",
    "match_phrases",
    "phrase",
    "prompts",
    "question",
    "random_scene",
    "render",
    "scene_from_dict",
    "scene_to_dict",
    "score",
    "strip_prompts",
    "strip_records",
    "tokenizer_corpus",
]

NAME = "grounded"
"""The world's name in :data:`vllm_vispec.tools.toy.WORLDS` and in its samples' seeds."""

CELL_WIDTH = 112
"""Cell width in pixels: 4 merged Qwen2.5-VL image tokens (28 pixels each)."""
HEIGHT = 224
"""Strip height in pixels: 8 merged image tokens."""
TOKENS_PER_CELL = CELL_WIDTH // 28
"""Answer tokens per cell (count, colour, shape, comma) == cell width in merged image tokens."""
EVAL_CELLS = 8
"""Cells of the 256-image-token prompt set (896x224 pixels)."""
COUNTS = (1, 2, 3)
BACKGROUND_RGB = (128, 128, 128)
"""Mid grey: every palette colour, black and white included, stands out against it."""
QUESTION = "Describe the picture from left to right."
"""The only question: a fixed prompt length keeps the answer-to-image offset fixed."""
_PLURAL = {"cross": "crosses"}


def _plural(shape: str) -> str:
    return _PLURAL.get(shape, shape + "s")


@dataclass(frozen=True)
class Cell:
    """``count`` copies of one shape in one colour."""

    count: int
    colour: str
    shape: str

    def __post_init__(self) -> None:
        if self.count not in COUNTS:
            raise ValueError(f"count must be one of {COUNTS}, got {self.count!r}")
        if self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}; expected one of {COLOURS}")
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; expected one of {SHAPES}")


@dataclass(frozen=True)
class StripScene:
    """A strip of cells, left to right."""

    cells: tuple[Cell, ...]

    def __post_init__(self) -> None:
        if not self.cells:
            raise ValueError("a strip needs at least one cell")


def image_size(n_cells: int) -> tuple[int, int]:
    """(width, height) in pixels of a strip of ``n_cells`` cells."""
    return n_cells * CELL_WIDTH, HEIGHT


def image_tokens(n_cells: int) -> int:
    """Qwen2.5-VL image tokens of such a strip: one per 28x28 block."""
    width, height = image_size(n_cells)
    return (width // 28) * (height // 28)


def random_scene(rng: random.Random, n_cells: int = EVAL_CELLS) -> StripScene:
    """Independent uniform count, colour and shape in every cell."""
    return StripScene(
        tuple(
            Cell(rng.choice(COUNTS), rng.choice(COLOURS), rng.choice(SHAPES))
            for _ in range(n_cells)
        )
    )


def scene_to_dict(scene: StripScene) -> dict[str, Any]:
    """A JSON-able dict of the scene."""
    return {"cells": [dataclasses.asdict(c) for c in scene.cells]}


def scene_from_dict(d: dict[str, Any]) -> StripScene:
    """Inverse of :func:`scene_to_dict` (also after a JSON round trip)."""
    return StripScene(tuple(Cell(**c) for c in d["cells"]))


# --------------------------------------------------------------------------------------------
# Rendering


def render(scene: StripScene) -> Image.Image:
    """Draw the strip: grey background, each cell's copies stacked and centred, no anti-aliasing.

    A copy's slot is ``HEIGHT / count`` high; shapes span about 60% of the cell width (about 5
    patches of 14 pixels), so shape, colour and count are all visible to the patch embedding.
    """
    width, height = image_size(len(scene.cells))
    image = Image.new("RGB", (width, height), BACKGROUND_RGB)
    draw = ImageDraw.Draw(image)
    for i, cell in enumerate(scene.cells):
        cx = i * CELL_WIDTH + CELL_WIDTH / 2
        slot = height / cell.count
        r = min(CELL_WIDTH * 0.3, slot * 0.36)
        for k in range(cell.count):
            draw_shape(draw, cell.shape, COLOUR_RGB[cell.colour], (cx, slot * (k + 0.5)), r,
                       ring_width=0.4)  # fmt: skip
    return image


# --------------------------------------------------------------------------------------------
# Descriptions and records


def phrase(cell: Cell) -> str:
    """``"two red circles"``: count word, colour, shape (plural when count > 1)."""
    shape = cell.shape if cell.count == 1 else _plural(cell.shape)
    return f"{NUMBER_WORDS[cell.count]} {cell.colour} {shape}"


def question(scene: StripScene) -> str:
    """Always :data:`QUESTION`."""
    return QUESTION


def describe(scene: StripScene) -> str:
    """The cells' phrases in reading order, comma separated, ending with a full stop."""
    return ", ".join(phrase(c) for c in scene.cells) + "."


def tokenizer_corpus(seed: int, n: int = 3000) -> list[str]:
    """Descriptions (of 1-8 cells) for the tokenizer's training, so each phrase is 4 tokens."""
    rng = random.Random(f"grounded-tokenizer:{seed}")
    lines = [describe(random_scene(rng, rng.randint(1, EVAL_CELLS))) for _ in range(n)]
    return [*lines, QUESTION]


def make_samples(
    n: int, seed: int, image_dir: pathlib.Path, n_cells: int = EVAL_CELLS
) -> list[dict[str, Any]]:
    """Write ``n`` PNG strips to ``image_dir`` and return LLaVA-style conversation records
    (the same format as :func:`vllm_vispec.tools.toy.world.make_samples`, ``scene`` included).

    Sample ``i`` depends only on ``(seed, i, n_cells)``, so a smaller ``n`` gives a prefix.
    File names are ``strip_{i:05d}.png``: use separate directories for different seeds.
    """
    return strip_records(sys.modules[__name__], n, seed, image_dir, n_cells)


def prompts(
    n: int, seed: int, n_cells: int = EVAL_CELLS
) -> list[tuple[dict[str, Any], Image.Image, str]]:
    """``n`` (record, image, question) triples about fresh strips; the default ``n_cells`` (8)
    gives 896x224 images, 256 Qwen2.5-VL image tokens each. Images are loaded into memory."""
    return strip_prompts(sys.modules[__name__], n, seed, n_cells)


def strip_records(
    world: ModuleType, n: int, seed: int, image_dir: pathlib.Path, n_cells: int
) -> list[dict[str, Any]]:
    """:func:`make_samples` of a strip world: a module with ``NAME``, ``random_scene``,
    ``question``, ``describe``, ``render`` and ``scene_to_dict``."""
    image_dir = pathlib.Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        scene = world.random_scene(random.Random(f"{world.NAME}-world:{seed}:{n_cells}:{i}"),
                                   n_cells)  # fmt: skip
        name = f"strip_{i:05d}"
        world.render(scene).save(image_dir / f"{name}.png", format="PNG")
        records.append(
            {
                "id": name,
                "image": f"{name}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\n" + world.question(scene)},
                    {"from": "gpt", "value": world.describe(scene)},
                ],
                "scene": world.scene_to_dict(scene),
            }
        )
    return records


def strip_prompts(
    world: ModuleType, n: int, seed: int, n_cells: int
) -> list[tuple[dict[str, Any], Image.Image, str]]:
    """:func:`prompts` of a strip world (see :func:`strip_records`)."""
    out = []
    with tempfile.TemporaryDirectory(prefix=f"{world.NAME}-world-") as tmp:
        for record in strip_records(world, n, seed, pathlib.Path(tmp), n_cells):
            with Image.open(pathlib.Path(tmp) / record["image"]) as image:
                rgb = image.convert("RGB")
            question = record["conversations"][0]["value"].replace("<image>", "").strip()
            out.append((record, rgb, question))
    return out


# --------------------------------------------------------------------------------------------
# Scoring

_PHRASE_RE = re.compile(
    rf"^({'|'.join(NUMBER_WORDS)})\s+({'|'.join(COLOURS)})\s+"
    rf"({'|'.join(SHAPES)})(?:es|s)?$"
)


def parse(text: str) -> list[tuple[str, str, str] | None]:
    """The text's cell phrases in order: (count word, colour, shape), or None if unreadable."""
    return match_phrases(text, _PHRASE_RE)


def match_phrases(text: str, pattern: re.Pattern[str]) -> list[tuple[str, ...] | None]:
    """The groups of ``pattern`` in each phrase of ``text`` (split at ``,``, ``.``, ``;`` and
    newlines, lower-cased, spaces collapsed), or None for a phrase it does not match."""
    out: list[tuple[str, ...] | None] = []
    for piece in re.split(r"[,.;\n]", text.lower()):
        if piece.strip():
            m = pattern.match(" ".join(piece.split()))
            out.append(m.groups() if m else None)
    return out


def score(scene: StripScene, text: str) -> float:
    """The fraction of the scene's facts that ``text`` states correctly, in [0, 1].

    Each cell has three facts (count, colour, shape); the i-th phrase of the text (split at
    ``,``, ``.``, ``;`` and newlines) is read as the i-th cell, so a skipped or swapped cell
    costs its facts. Every phrase beyond the last cell is a hallucination and adds three wrong
    facts to the denominator.
    """
    phrases = parse(text)
    correct = 0
    for cell, got in zip(scene.cells, phrases, strict=False):
        if got is None:
            continue
        count, colour, shape = got
        correct += (count == NUMBER_WORDS[cell.count]) + (colour == cell.colour)
        correct += shape == cell.shape
    facts = 3 * len(scene.cells)
    extra = 3 * max(0, len(phrases) - len(scene.cells))
    return correct / (facts + extra)


def fact_accuracy(scene: StripScene, text: str) -> dict[str, float]:
    """Per-kind accuracy (count, colour, shape) over the scene's cells, for diagnostics."""
    phrases = parse(text)
    hits = {"count": 0, "colour": 0, "shape": 0}
    for cell, got in zip(scene.cells, phrases, strict=False):
        if got is not None:
            hits["count"] += got[0] == NUMBER_WORDS[cell.count]
            hits["colour"] += got[1] == cell.colour
            hits["shape"] += got[2] == cell.shape
    return {k: v / len(scene.cells) for k, v in hits.items()}


def fact_token(text: str) -> bool:
    """Whether a decoded answer token states an image fact (a count, colour or shape); the
    others are the commas and the end of the answer."""
    return text.strip().lower() in _FACT_WORDS


_FACT_WORDS = frozenset(
    [NUMBER_WORDS[c] for c in COUNTS] + [*COLOURS, *SHAPES, *map(_plural, SHAPES)]
)
