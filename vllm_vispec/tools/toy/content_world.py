"""A world whose answers take image facts in an order the question decides: drafts must find
facts by content, not by position.

In :mod:`~vllm_vispec.tools.toy.grounded_world` the answer describes the cells left to right, so
answer
token ``k`` always belongs to the same image column: a draft that cannot see the image (EAGLE-1)
still reads every fact from the target's hidden states at a fixed offset, which flatters it
against vision-aware drafts. Here the strips have the same geometry (8 cells, 896x224 pixels,
256 image tokens), but

* every cell has its own colour (the 8 colours, shuffled) and is filled with it, its one to
  three copies of a shape drawn in black or white (:func:`ink`), all the same size, one per
  third of the cell from the top, so every image token of a cell shows its colour;
* the question names the colours in a random order: ``"Describe the white cell, the red cell,
  ..."``; the answer gives, in that order, each colour's count and shape: ``"white two circles,
  red one star, ..."``.

Where the described cell sits in the strip is random, so whoever predicts a count or shape must
find the cell *of that colour* among the image positions. The colours are the question's
(text): each question item (``" the red cell,"``) is as many tokens as an answer phrase (4 with
the tiny target's tokenizer), so the colour to describe next sits at a fixed offset back in the
question. Counts and shapes are the image facts (:func:`fact_token`), half of the answer tokens;
the commas and the full stop are the template.

Fixed-stride questions because a tiny target learns to copy at a fixed offset far sooner than
by content (an induction head, when the question named a random number of colours); filled
cells so that every image token of the described cell answers to its colour. The target that
learned it (``models/content/target``) first saw strips of one or two cells, where no cell has
to be found (``GroundedRecipe.small_steps``); what did not work is in
benchmarks/results/content_target_attempts.md.

:func:`score` is the fraction of facts right: per asked colour, in the question's order, the
colour itself and its cell's count and shape; phrases beyond the asked colours count as wrong
facts. Pure Python and PIL, deterministic like the grounded world.
"""

from __future__ import annotations

import random
import re
import sys
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw

from vllm_vispec.tools.toy.grounded_world import (
    CELL_WIDTH,
    COLOURS,
    COUNTS,
    EVAL_CELLS,
    SHAPES,
    Cell,
    _plural,
    image_size,
    image_tokens,
    match_phrases,
    strip_prompts,
    strip_records,
)
from vllm_vispec.tools.toy.world import COLOUR_RGB, NUMBER_WORDS, draw_shape

__all__ = [
    "EVAL_CELLS",
    "NAME",
    "AskedScene",
    "describe",
    "fact_accuracy",
    "fact_token",
    "ink",
    "image_size",
    "image_tokens",
    "make_samples",
    "parse",
    "prompts",
    "question",
    "random_scene",
    "render",
    "scene_from_dict",
    "scene_to_dict",
    "score",
    "tokenizer_corpus",
]

NAME = "content"
"""The world's name in :data:`vllm_vispec.tools.toy.WORLDS` and in its samples' seeds."""


@dataclass(frozen=True)
class AskedScene:
    """A strip whose cells have distinct colours, and the colours asked about, in order."""

    cells: tuple[Cell, ...]
    asked: tuple[str, ...]

    def __post_init__(self) -> None:
        colours = [c.colour for c in self.cells]
        if len(set(colours)) != len(colours):
            raise ValueError(f"every cell needs its own colour, got {colours}")
        if not self.asked or len(set(self.asked)) != len(self.asked):
            raise ValueError(f"ask about one or more distinct colours, got {self.asked}")
        if missing := set(self.asked) - set(colours):
            raise ValueError(f"asked about colours no cell has: {sorted(missing)}")

    def cell(self, colour: str) -> Cell:
        """The cell holding ``colour``."""
        return next(c for c in self.cells if c.colour == colour)


def random_scene(rng: random.Random, n_cells: int = EVAL_CELLS) -> AskedScene:
    """``n_cells`` (at most 8) distinct colours in a random order, uniform counts and shapes,
    and every colour asked, in another random order."""
    if not 1 <= n_cells <= len(COLOURS):
        raise ValueError(f"a strip has 1 to {len(COLOURS)} cells here, got {n_cells}")
    colours = rng.sample(COLOURS, n_cells)
    cells = tuple(Cell(rng.choice(COUNTS), c, rng.choice(SHAPES)) for c in colours)
    asked = tuple(rng.sample(colours, n_cells))
    return AskedScene(cells, asked)


def ink(fill: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light fills, white on dark ones (by luma)."""
    return (0, 0, 0) if 0.3 * fill[0] + 0.59 * fill[1] + 0.11 * fill[2] > 128 else (255, 255, 255)


def render(scene: AskedScene) -> Image.Image:
    """The grounded world's strip geometry; each cell filled with its colour, its copies drawn
    in :func:`ink`, one per third of the cell from the top, all the same size, no anti-aliasing.

    Not grey ink: grey sits near the vision tower's pixel mean, so grey shapes on a fill embed
    as little more than the fill; a tiny target trained on one- and two-cell strips so drawn
    kept counts at chance after 1000 steps, against 0.4 nats in 800 with black or white ink.
    """
    width, height = image_size(len(scene.cells))
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    slot = height / max(COUNTS)
    r = min(CELL_WIDTH * 0.3, slot * 0.36)
    for i, cell in enumerate(scene.cells):
        fill = COLOUR_RGB[cell.colour]
        draw.rectangle((i * CELL_WIDTH, 0, (i + 1) * CELL_WIDTH - 1, height - 1), fill=fill)
        for k in range(cell.count):
            centre = (i * CELL_WIDTH + CELL_WIDTH / 2, slot * (k + 0.5))
            draw_shape(draw, cell.shape, ink(fill), centre, r, ring_width=0.4)
    return image


def question(scene: AskedScene) -> str:
    """``"Describe the white cell, the red cell, the blue cell."``"""
    return "Describe " + ", ".join(f"the {c} cell" for c in scene.asked) + "."


def _phrase(colour: str, cell: Cell) -> str:
    shape = cell.shape if cell.count == 1 else _plural(cell.shape)
    return f"{colour} {NUMBER_WORDS[cell.count]} {shape}"


def describe(scene: AskedScene) -> str:
    """``"white two circles, red one star, blue three rings."``: per asked colour, in order."""
    return ", ".join(_phrase(c, scene.cell(c)) for c in scene.asked) + "."


def scene_to_dict(scene: AskedScene) -> dict[str, Any]:
    """A JSON-able dict of the scene."""
    return {"cells": [vars(c) for c in scene.cells], "asked": list(scene.asked)}


def scene_from_dict(d: dict[str, Any]) -> AskedScene:
    """Inverse of :func:`scene_to_dict` (also after a JSON round trip)."""
    return AskedScene(tuple(Cell(**c) for c in d["cells"]), tuple(d["asked"]))


def make_samples(
    n: int, seed: int, image_dir: Any, n_cells: int = EVAL_CELLS
) -> list[dict[str, Any]]:
    """``n`` PNG strips in ``image_dir`` and their conversation records, as
    :func:`vllm_vispec.tools.toy.grounded_world.make_samples` writes them."""
    return strip_records(sys.modules[__name__], n, seed, image_dir, n_cells)


def prompts(n: int, seed: int, n_cells: int = EVAL_CELLS) -> list[tuple[dict, Image.Image, str]]:
    """``n`` (record, image, question) triples about fresh strips (256 image tokens each)."""
    return strip_prompts(sys.modules[__name__], n, seed, n_cells)


def tokenizer_corpus(seed: int, n: int = 3000) -> list[str]:
    """Questions and answers about strips of 1-8 cells, for the tokenizer's training."""
    rng = random.Random(f"content-tokenizer:{seed}")
    scenes = [random_scene(rng, rng.randint(1, EVAL_CELLS)) for _ in range(n)]
    return [text for s in scenes for text in (question(s), describe(s))]


# --------------------------------------------------------------------------------------------
# Scoring

_PHRASE_RE = re.compile(
    rf"^({'|'.join(COLOURS)})\s+({'|'.join(NUMBER_WORDS)})\s+({'|'.join(SHAPES)})(?:es|s)?$"
)


def parse(text: str) -> list[tuple[str, str, str] | None]:
    """The text's phrases in order: (colour, count word, shape), or None if unreadable."""
    return match_phrases(text, _PHRASE_RE)


def fact_accuracy(scene: AskedScene, text: str) -> dict[str, float]:
    """Per kind, the share of asked colours whose phrase (in the question's order) gets it
    right: the colour named, the count and the shape of that colour's cell."""
    return _accuracy(scene, parse(text))


def _accuracy(scene: AskedScene, phrases: list) -> dict[str, float]:
    hits = {"colour": 0, "count": 0, "shape": 0}
    for colour, got in zip(scene.asked, phrases, strict=False):
        if got is not None:
            cell = scene.cell(colour)
            hits["colour"] += got[0] == colour
            hits["count"] += got[1] == NUMBER_WORDS[cell.count]
            hits["shape"] += got[2] == cell.shape
    return {k: v / len(scene.asked) for k, v in hits.items()}


def score(scene: AskedScene, text: str) -> float:
    """The fraction of facts ``text`` states right, in [0, 1]: three per asked colour (see
    :func:`fact_accuracy`); every phrase beyond the asked colours adds three wrong facts."""
    phrases = parse(text)
    right = sum(_accuracy(scene, phrases).values()) * len(scene.asked)
    extra = max(0, len(phrases) - len(scene.asked))
    return right / (3 * (len(scene.asked) + extra))


def fact_token(text: str) -> bool:
    """Whether a decoded answer token states an image fact: a count or a shape (the colours
    are the question's)."""
    return text.strip().lower() in _FACT_WORDS


_FACT_WORDS = frozenset([NUMBER_WORDS[c] for c in COUNTS] + [*SHAPES, *map(_plural, SHAPES)])
