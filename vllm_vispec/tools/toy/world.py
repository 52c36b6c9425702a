"""A small synthetic world of pictures with long, picture-dependent descriptions.

ViSpec's claim is that a draft which sees the image guesses more of the target's tokens. Testing
that needs a target that really looks at its images, and random tiny models do not. This module
gives a world a tiny vision-language model can learn from scratch on a CPU in minutes: seeded
scenes (coloured shapes on a 3x3 grid, a background, maybe a texture and a word), a renderer, long
descriptions in varied templates whose content words can only be known from the image, LLaVA-style
training records, and :func:`score`, which measures how many facts of a scene a generated
description gets right.

Everything is pure Python and PIL and deterministic: the same seed gives the same records and
byte-identical PNG files.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import random
import re
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "COLOURS",
    "COLOUR_RGB",
    "POSITIONS",
    "QUESTIONS",
    "SHAPES",
    "SIZES",
    "TEXTURES",
    "WORDS",
    "Scene",
    "ToyObject",
    "cell_box",
    "describe",
    "draw_shape",
    "fact_token",
    "make_samples",
    "prompts",
    "random_scene",
    "render",
    "scene_from_dict",
    "scene_to_dict",
    "score",
]

COLOURS = ("red", "green", "blue", "yellow", "orange", "purple", "black", "white")
"""Colour names. Backgrounds, textures, objects and text all use this palette."""

COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (30, 70, 220),
    "yellow": (245, 215, 30),
    "orange": (245, 135, 20),
    "purple": (140, 40, 180),
    "black": (20, 20, 20),
    "white": (245, 245, 245),
}
"""Exact fill colours; shapes are drawn without anti-aliasing, so pixels match these exactly."""

SHAPES = ("circle", "square", "triangle", "star", "ring", "cross")
"""Shape kinds, chosen to stay distinct at 14-pixel patch resolution."""

SIZES = ("small", "large")

POSITIONS = (
    "top left",
    "top middle",
    "top right",
    "middle left",
    "centre",
    "middle right",
    "bottom left",
    "bottom middle",
    "bottom right",
)
"""The 3x3 grid cells in reading order; each object and the word occupy a cell of their own."""

TEXTURES = ("stripes", "dots", "grid", "checker")

WORDS = (
    "cat", "dog", "sun", "car", "bus", "cup", "hat", "tree", "book", "fish", "bird", "boat",
)  # fmt: skip
"""Short common words that a scene may show as text (drawn in capitals)."""

QUESTIONS = (
    "Describe the image in detail.",
    "What do you see in this picture? Please answer at length.",
    "Give a detailed description of this image.",
    "Tell me everything you can see in the picture.",
    "Please describe this picture carefully, with all its objects and colours.",
    "What is in this image? Describe it in detail.",
)
"""User prompts that all ask for a long description, so the answer is always the same kind."""

IMAGE_SIZE = 168
"""Side of the training images in pixels: 12x12 patches of 14, 36 Qwen2.5-VL image tokens."""
MAX_OBJECTS = 4
NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_PLURAL = {"cross": "crosses"}


@dataclass(frozen=True)
class ToyObject:
    """One filled shape in one grid cell."""

    shape: str
    colour: str
    position: str
    size: str

    def __post_init__(self) -> None:
        _check(self.shape, SHAPES, "shape")
        _check(self.colour, COLOURS, "colour")
        _check(self.position, POSITIONS, "position")
        _check(self.size, SIZES, "size")


@dataclass(frozen=True)
class Scene:
    """A picture: background, optional texture, 1-4 objects and an optional word.

    Object colours are distinct and differ from the background and texture colours, and every
    object and the word sit in distinct cells, so each fact in a description is unambiguous.
    """

    background: str
    objects: tuple[ToyObject, ...]
    texture: str | None = None
    texture_colour: str | None = None
    word: str | None = None
    word_position: str | None = None

    def __post_init__(self) -> None:
        _check(self.background, COLOURS, "background")
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"a scene has 1-{MAX_OBJECTS} objects, got {len(self.objects)}")
        if (self.texture is None) != (self.texture_colour is None):
            raise ValueError("texture and texture_colour must be given together")
        if self.texture is not None:
            _check(self.texture, TEXTURES, "texture")
            _check(self.texture_colour, COLOURS, "texture colour")
            if self.texture_colour == self.background:
                raise ValueError("texture colour equals the background")
        if (self.word is None) != (self.word_position is None):
            raise ValueError("word and word_position must be given together")
        if self.word is not None:
            _check(self.word, WORDS, "word")
            _check(self.word_position, POSITIONS, "word position")
        colours = [o.colour for o in self.objects]
        if len(set(colours)) != len(colours):
            raise ValueError(f"object colours must be distinct: {colours}")
        if self.background in colours or self.texture_colour in colours:
            raise ValueError("an object has the background or texture colour")
        cells = [o.position for o in self.objects] + (
            [self.word_position] if self.word_position else []
        )
        if len(set(cells)) != len(cells):
            raise ValueError(f"objects and word must be in distinct cells: {cells}")


def _check(value: Any, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {allowed}")


# --------------------------------------------------------------------------------------------
# Scenes


def random_scene(rng: random.Random) -> Scene:
    """Draw a scene: 1-4 objects, a texture half of the time, a word half of the time."""
    background = rng.choice(COLOURS)
    free_colours = [c for c in COLOURS if c != background]
    texture = texture_colour = None
    if rng.random() < 0.5:
        texture = rng.choice(TEXTURES)
        texture_colour = rng.choice(free_colours)
        free_colours.remove(texture_colour)
    n = rng.randint(1, MAX_OBJECTS)
    has_word = rng.random() < 0.5
    cells = rng.sample(POSITIONS, n + has_word)
    colours = rng.sample(free_colours, n)
    objects = tuple(
        ToyObject(rng.choice(SHAPES), colour, cell, rng.choice(SIZES))
        for colour, cell in zip(colours, cells, strict=False)
    )
    word = rng.choice(WORDS) if has_word else None
    return Scene(background, objects, texture, texture_colour, word, cells[n] if has_word else None)


def scene_to_dict(scene: Scene) -> dict[str, Any]:
    """A JSON-able dict of the scene (objects become a list of dicts)."""
    d = dataclasses.asdict(scene)
    d["objects"] = [dataclasses.asdict(o) for o in scene.objects]
    return d


def scene_from_dict(d: dict[str, Any]) -> Scene:
    """Inverse of :func:`scene_to_dict` (also accepts the dict after a JSON round trip)."""
    fields = dict(d)
    fields["objects"] = tuple(ToyObject(**o) for o in fields["objects"])
    return Scene(**fields)


# --------------------------------------------------------------------------------------------
# Rendering


def cell_box(position: str, size: int = 224) -> tuple[int, int, int, int]:
    """Pixel box (left, top, right, bottom) of a grid cell in a ``size`` x ``size`` image."""
    row, col = divmod(POSITIONS.index(position), 3)
    return (col * size // 3, row * size // 3, (col + 1) * size // 3, (row + 1) * size // 3)


def render(scene: Scene, size: int = 224) -> Image.Image:
    """Draw the scene as a deterministic ``size`` x ``size`` RGB image.

    Shapes are filled without anti-aliasing, so their pixels equal :data:`COLOUR_RGB` exactly.
    Large shapes span about 85% of their cell (over four 14-pixel patches at 224), small ones
    about half, so both survive the vision tower's patching.
    """
    image = Image.new("RGB", (size, size), COLOUR_RGB[scene.background])
    draw = ImageDraw.Draw(image)
    if scene.texture is not None:
        _draw_texture(draw, scene.texture, COLOUR_RGB[scene.texture_colour], size)
    for obj in scene.objects:
        _draw_shape(draw, obj, size)
    if scene.word is not None:
        _draw_word(draw, scene, size)
    return image


def _draw_texture(
    draw: ImageDraw.ImageDraw, kind: str, rgb: tuple[int, int, int], size: int
) -> None:
    step = max(8, size // 12)
    thick = max(1, size // 75)
    if kind == "stripes":  # diagonal, so they never look like a shape edge
        for k in range(-size, size, step):
            draw.line([(k, 0), (k + size, size)], fill=rgb, width=thick + 1)
    elif kind == "dots":
        r = max(1, size // 90)
        for y in range(step // 2, size, step):
            for x in range(step // 2, size, step):
                draw.ellipse([x - r, y - r, x + r, y + r], fill=rgb)
    elif kind == "grid":
        for k in range(0, size, step):
            draw.line([(k, 0), (k, size)], fill=rgb, width=thick)
            draw.line([(0, k), (size, k)], fill=rgb, width=thick)
    else:  # checker: small squares, much smaller than any object
        half = max(4, step // 2)
        for y in range(0, size, half):
            for x in range(0, size, half):
                if (x // half + y // half) % 2:
                    draw.rectangle([x, y, x + half - 1, y + half - 1], fill=rgb)


def _draw_shape(draw: ImageDraw.ImageDraw, obj: ToyObject, size: int) -> None:
    left, top, right, bottom = cell_box(obj.position, size)
    r = (right - left) * (0.43 if obj.size == "large" else 0.25)
    centre = ((left + right) / 2, (top + bottom) / 2)
    draw_shape(draw, obj.shape, COLOUR_RGB[obj.colour], centre, r, ring_width=0.36)


def draw_shape(
    draw: ImageDraw.ImageDraw,
    shape: str,
    rgb: tuple[int, int, int],
    centre: tuple[float, float],
    r: float,
    ring_width: float,
) -> None:
    """One filled shape of "radius" ``r`` (a ring: outline ``ring_width * r`` wide), no
    anti-aliasing, so patches see flat colours."""
    cx, cy = centre
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=rgb)
    elif shape == "square":
        s = r * 0.85
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=rgb)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=rgb)
    elif shape == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.42
            angle = math.radians(-90 + 36 * k)
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        draw.polygon(points, fill=rgb)
    elif shape == "ring":
        width = max(2, round(r * ring_width))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=rgb, width=width)
    else:  # cross: a plus sign
        t = r * 0.32
        draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=rgb)
        draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=rgb)


def _text_colour(scene: Scene) -> str:
    """Black or white, whichever contrasts more with the background."""
    red, green, blue = COLOUR_RGB[scene.background]
    return "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 110 else "white"


@lru_cache(maxsize=64)
def _font(word: str, cell: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The largest default-font size at which the word fits in 90% of a cell's width."""
    for points in range(max(8, int(cell * 0.5)), 5, -1):
        font = ImageFont.load_default(size=points)
        left, _, right, _ = font.getbbox(word)
        if right - left <= cell * 0.9:
            return font
    return ImageFont.load_default()


def _draw_word(draw: ImageDraw.ImageDraw, scene: Scene, size: int) -> None:
    left, top, right, bottom = cell_box(scene.word_position, size)
    text = scene.word.upper()
    font = _font(text, right - left)
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    cx, cy = (left + right) / 2, (top + bottom) / 2
    if scene.texture is not None:  # a plain patch behind the letters keeps them readable
        pad = 3
        draw.rectangle(
            [cx - (x1 - x0) / 2 - pad, cy - (y1 - y0) / 2 - pad,
             cx + (x1 - x0) / 2 + pad, cy + (y1 - y0) / 2 + pad],
            fill=COLOUR_RGB[scene.background],
        )  # fmt: skip
    origin = (cx - (x0 + x1) / 2, cy - (y0 + y1) / 2)
    rgb = COLOUR_RGB[_text_colour(scene)]
    bold = max(1, size // 200)  # a thin outline in the same colour makes the letters bolder
    draw.text(origin, text, fill=rgb, font=font, stroke_width=bold, stroke_fill=rgb)


# --------------------------------------------------------------------------------------------
# Descriptions


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _plural(shape: str) -> str:
    return _PLURAL.get(shape, shape + "s")


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _cap(sentence: str) -> str:
    return sentence[0].upper() + sentence[1:]


def _relation(a: ToyObject, b: ToyObject) -> str:
    """Where a is relative to b, from their grid cells."""
    ra, ca = divmod(POSITIONS.index(a.position), 3)
    rb, cb = divmod(POSITIONS.index(b.position), 3)
    vertical = "above" if ra < rb else "below" if ra > rb else ""
    horizontal = "to the left of" if ca < cb else "to the right of" if ca > cb else ""
    if vertical and horizontal:
        return f"{vertical} and {horizontal}"
    return vertical or horizontal


def _counts(scene: Scene) -> str:
    """'two circles and one star', in order of first appearance."""
    order: dict[str, int] = {}
    for obj in scene.objects:
        order[obj.shape] = order.get(obj.shape, 0) + 1
    return _join(
        [f"{NUMBER_WORDS[k]} {shape if k == 1 else _plural(shape)}" for shape, k in order.items()]
    )


_MAIN_OBJECT = (
    "in the {pos} there is {a_obj}",
    "{a_obj} sits in the {pos}",
    "there is {a_obj} in the {pos}",
    "you can see {a_obj} in the {pos} of the picture",
    "in the {pos}, {a_cs} is drawn, and it is {size}",
    "the {pos} of the image holds {a_obj}",
    "{a_cs} appears in the {pos}, and it is quite {size}",
)
_SEQUENCE = ("", "", "next, ", "also, ", "then ")


def describe(scene: Scene, rng: random.Random) -> str:
    """A long description (about 60-110 words) of the scene in randomly chosen templates.

    Every content word (colours, shapes, positions, counts, the word) comes from the scene and
    facts are restated several times, so later text depends on the image, while the frame words
    come from a small, repetitive vocabulary. Every statement is true of the scene, so
    ``score(scene, describe(scene, rng)) == 1.0``.
    """
    n = len(scene.objects)
    objs = list(scene.objects)
    if rng.random() < 0.5:
        rng.shuffle(objs)
    be = "is" if n == 1 else "are"
    things = rng.choice(("object", "shape")) + ("" if n == 1 else "s")
    count = f"{NUMBER_WORDS[n]} {things}"
    bg = scene.background
    if scene.texture is None:
        bgdesc = rng.choice((f"plain {bg} background", f"{bg} background"))
        texdesc = ""
    else:
        tc = scene.texture_colour
        texdesc = {
            "stripes": f"{tc} stripes",
            "dots": f"{tc} dots",
            "grid": f"a {tc} grid",
            "checker": f"a {tc} checker pattern",
        }[scene.texture]
        bgdesc = f"{bg} background with {texdesc}"
    a_bg = _a(bgdesc)
    colours = _join([o.colour for o in objs])
    fill = {"count": count, "be": be, "a_bg": a_bg, "things": things, "bg": bg}

    # Mandatory sections.
    intro_full = (
        "the picture shows {count} on {a_bg}",
        "this image contains {count}, drawn on {a_bg}",
        "in this picture there {be} {count} on {a_bg}",
        "we can see {count} placed on {a_bg}",
        "the image has {a_bg}, and there {be} {count} on it",
    )
    intro_short = (
        "there {be} {count} in this picture",
        "the picture shows {count}",
        "this is a simple picture with {count}",
    )
    background = [
        "the {things} {be} drawn on {a_bg}",
        "all of this is drawn on {a_bg}",
    ]
    if scene.texture is None:
        background.append("the background is plain {bg}")
    else:
        background.append("the background is {bg}, with " + texdesc)
    short_intro = rng.random() < 0.35
    intro = [rng.choice(intro_short if short_intro else intro_full).format(**fill)]
    bg_section = [rng.choice(background).format(**fill)] if short_intro else []

    objects_section = []
    for i, obj in enumerate(objs):
        cs = f"{obj.colour} {obj.shape}"
        sentence = rng.choice(_MAIN_OBJECT).format(
            pos=obj.position, size=obj.size, a_obj=_a(f"{obj.size} {cs}"), a_cs=_a(cs)
        )
        if i == n - 1 and n > 2 and rng.random() < 0.5:
            sentence = "finally, " + sentence
        elif i > 0:
            sentence = rng.choice(_SEQUENCE) + sentence
        objects_section.append(sentence)

    word_section = []
    if scene.word is not None:
        fill_w = {"w": scene.word, "wpos": scene.word_position, "tcol": _text_colour(scene)}
        word_section.append(
            rng.choice(
                (
                    "the word {w} is written in the {wpos}",
                    "in the {wpos}, the word {w} is written in {tcol} letters",
                    "there is also some text in the {wpos}, and it reads {w}",
                    "the {wpos} shows the word {w} in {tcol} letters",
                )
            ).format(**fill_w)
        )

    pair_list = _join([_a(f"{o.colour} {o.shape}") for o in objs])
    summary_section = [
        rng.choice(
            (
                "overall, the image contains {shapes}, coloured {colours}",
                "in total there {be} {count}, {shapes}",
                "to sum up, the picture has {count} in {colours}",
                "so the {things} {be} {pairs}",
            )
        ).format(shapes=_counts(scene), colours=colours, pairs=pair_list, **fill)
    ]

    # Optional restatements, added until the description reaches its target length.
    details: list[str] = []
    for obj in objs:
        cs = f"{obj.colour} {obj.shape}"
        details += rng.sample(
            (
                f"the {cs} is {obj.size}",
                f"the {obj.shape} in the {obj.position} is {obj.colour}",
                f"the {obj.position} contains the {cs}",
                f"the {cs} is easy to see against the {bg} background",
            ),
            2 if n < 3 else 1,
        )
    for a, b in zip(objs, objs[1:], strict=False):
        if a.size != b.size and rng.random() < 0.5:
            big, small = (a, b) if a.size == "large" else (b, a)
            details.append(
                rng.choice(
                    (
                        f"the {big.colour} {big.shape} is bigger than the {small.colour} "
                        f"{small.shape}",
                        f"the {small.colour} {small.shape} is smaller than the {big.colour} "
                        f"{big.shape}",
                    )
                )
            )
        else:
            details.append(
                f"the {a.colour} {a.shape} is {_relation(a, b)} the {b.colour} {b.shape}"
            )
    if n > 1 and len({o.size for o in objs}) == 1:
        details.append(f"all of the {things} are {objs[0].size}")
    if n == 1:
        colour_sentence = rng.choice(
            (f"the {things} is {objs[0].colour}", "the only object is " + pair_list)
        )
    else:
        colour_sentence = rng.choice(
            (f"the colours of the {things} are {colours}", f"they are coloured {colours}")
        )
    extras = [
        rng.choice(("that makes {count} in all", "counting them gives {count}")).format(**fill),
        colour_sentence,
        rng.choice(
            ("nothing else can be seen in the picture", f"the rest of the {bg} background is empty")
        ),
    ]
    if scene.texture is not None:
        kind_be = "are" if scene.texture in ("stripes", "dots") else "is"
        extras.append(f"the {texdesc.removeprefix('a ')} {kind_be} easy to see behind the {things}")
    if scene.word is not None:
        word_section.append(
            rng.choice(
                (f"the text says {scene.word}", f"the word in the picture reads {scene.word}")
            )
        )
        extras.append(f"apart from the {things}, the picture has the word {scene.word}")
    else:
        extras.append(
            rng.choice(("there is no text in the picture", "no word is written anywhere"))
        )
    if not bg_section:
        extras.append(rng.choice(background).format(**fill))

    sections = {
        "objects": objects_section,
        "details": [],
        "word": word_section[:1],
        "background": bg_section,
        "summary": summary_section,
        "extras": [],
    }
    optional = (
        [("details", s) for s in details]
        + [("extras", s) for s in extras]
        + [("word", s) for s in word_section[1:]]
    )
    rng.shuffle(optional)

    def n_words() -> int:
        return sum(len(s.split()) for part in (intro, *sections.values()) for s in part)

    target = rng.randint(70, 100)
    for section, sentence in optional:
        if n_words() >= target:
            break
        if n_words() + len(sentence.split()) <= 110:
            sections[section].append(sentence)
    order = rng.choice(
        (
            ("objects", "details", "word", "background", "summary", "extras"),
            ("word", "objects", "summary", "details", "background", "extras"),
            ("background", "objects", "word", "details", "summary", "extras"),
            ("summary", "objects", "details", "word", "background", "extras"),
        )
    )
    sentences = intro + [s for name in order for s in sections[name]]
    return " ".join(_cap(s) + "." for s in sentences)


# --------------------------------------------------------------------------------------------
# Records


def make_samples(
    n: int, seed: int, image_dir: pathlib.Path, size: int = IMAGE_SIZE
) -> list[dict[str, Any]]:
    """Write ``n`` PNG images (``size`` pixels square) to ``image_dir`` and return LLaVA-style
    conversation records.

    Sample ``i`` depends only on ``(seed, i)``, so a smaller ``n`` gives a prefix of the records.
    File names are ``toy_{i:05d}.png``: use separate directories for different seeds.
    """
    image_dir = pathlib.Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        rng = random.Random(f"toy-world:{seed}:{i}")
        scene = random_scene(rng)
        question = rng.choice(QUESTIONS)
        description = describe(scene, rng)
        name = f"toy_{i:05d}"
        render(scene, size).save(image_dir / f"{name}.png", format="PNG")
        records.append(
            {
                "id": name,
                "image": f"{name}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\n" + question},
                    {"from": "gpt", "value": description},
                ],
                "scene": scene_to_dict(scene),
            }
        )
    return records


def prompts(n: int, seed: int) -> list[tuple[dict[str, Any], Image.Image, str]]:
    """``n`` (record, image, question) triples for asking a model about fresh scenes.

    The images are loaded into memory (the PNG files are temporary); the record keeps the scene
    and the reference description for scoring.
    """
    out = []
    with tempfile.TemporaryDirectory(prefix="toy-world-") as tmp:
        for record in make_samples(n, seed, pathlib.Path(tmp)):
            with Image.open(pathlib.Path(tmp) / record["image"]) as image:
                rgb = image.convert("RGB")
            question = record["conversations"][0]["value"].replace("<image>", "").strip()
            out.append((record, rgb, question))
    return out


# --------------------------------------------------------------------------------------------
# Scoring

_COLOUR_RE = "|".join(COLOURS)
_PAIR_RE = re.compile(rf"\b({_COLOUR_RE})\s+({'|'.join(SHAPES)})(?:es|s)?\b")
_POSITION_RE = re.compile(rf"\b({'|'.join(POSITIONS)})\b")
_COUNT_RE = re.compile(rf"\b({'|'.join(NUMBER_WORDS)})\s+(?:objects?|shapes?)\b")
_BACKGROUND_RE = re.compile(
    rf"\b({_COLOUR_RE})\s+background\b|\bbackground\s+is\s+(?:plain\s+)?({_COLOUR_RE})\b"
)
_TEXTURE_RE = re.compile(rf"\b({_COLOUR_RE})\s+(stripes|dots|grid|checker)\b")
_WORD_RE = re.compile(rf"\b(?:word|reads|says)\s+({'|'.join(WORDS)})\b")


def score(scene: Scene, text: str) -> float:
    """The fraction of the scene's facts that ``text`` states correctly, in [0, 1].

    The text is lower-cased and matched with regexes built for :func:`describe`'s templates:

    * one fact per object: its ``<colour> <shape>`` pair (plural allowed) is mentioned;
    * one fact per object: its position is stated, and correctly. A position claim is a sentence
      (split at ``.``, ``!``, ``?`` and newlines) that mentions exactly one distinct colour-shape
      pair and exactly one grid position; the fact holds if the object's pair has at least one
      claim and every claim names its true cell;
    * the object count: some ``<number> object(s)|shape(s)`` appears and every such count is right;
    * the background: ``<colour> background`` or ``background is [plain] <colour>`` appears and
      every such colour is right;
    * the texture, if the scene has one: ``<colour> stripes|dots|grid|checker`` appears and every
      such mention names the true colour and kind;
    * the word, if the scene has one: ``word|reads|says <word>`` (a word of :data:`WORDS`)
      appears and every such word is the scene's.

    Wrong facts add to the denominator only: each distinct colour-shape pair that is mentioned but
    not in the scene counts as one wrong fact, and so does any texture mention when the scene has
    no texture and any word mention when it has no word. So an unrelated description scores low.
    """
    text = text.lower()
    truth = {(o.colour, o.shape): o for o in scene.objects}
    mentioned = set(_PAIR_RE.findall(text))
    facts = 2 * len(scene.objects) + 2
    correct = sum(pair in mentioned for pair in truth)
    wrong = len(mentioned - truth.keys())

    claims: dict[tuple[str, str], set[str]] = {}
    for sentence in re.split(r"[.!?\n]", text):
        pairs = set(_PAIR_RE.findall(sentence))
        places = _POSITION_RE.findall(sentence)
        if len(pairs) == 1 and len(places) == 1:
            claims.setdefault(pairs.pop(), set()).add(places[0])
    correct += sum(claims.get(pair) == {o.position} for pair, o in truth.items())

    counts = {NUMBER_WORDS.index(w) for w in _COUNT_RE.findall(text)}
    correct += counts == {len(scene.objects)}
    backgrounds = {a or b for a, b in _BACKGROUND_RE.findall(text)}
    correct += backgrounds == {scene.background}

    textures = set(_TEXTURE_RE.findall(text))
    if scene.texture is not None:
        facts += 1
        correct += textures == {(scene.texture_colour, scene.texture)}
    else:
        wrong += bool(textures)
    words = set(_WORD_RE.findall(text))
    if scene.word is not None:
        facts += 1
        correct += words == {scene.word}
    else:
        wrong += bool(words)
    return correct / (facts + wrong)


def fact_token(text: str) -> bool:
    """Whether a decoded answer token states an image fact (a colour, shape, size, texture,
    count, grid position or shown word), as opposed to the template around them."""
    return text.strip().lower() in _FACT_WORDS


_FACT_WORDS = frozenset(
    [*COLOURS, *SHAPES, *map(_plural, SHAPES), *SIZES, *TEXTURES, *WORDS, *NUMBER_WORDS[1:]]
    + [w for p in POSITIONS for w in p.split()]
)
