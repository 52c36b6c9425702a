"""The toy world is deterministic, varied, visibly drawn, and its scorer measures the right thing.

Training data and held-out accuracy for the vision-aware draft experiments come from this module,
so a silent change in determinism, in what is drawn, or in what :func:`score` counts would make
runs incomparable or the accuracy number meaningless.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import random
import re

from vllm_vispec.tools.toy.world import (
    COLOUR_RGB,
    COLOURS,
    POSITIONS,
    QUESTIONS,
    SHAPES,
    WORDS,
    Scene,
    ToyObject,
    cell_box,
    describe,
    make_samples,
    random_scene,
    render,
    scene_from_dict,
    scene_to_dict,
    score,
)


def _scene(seed: int) -> Scene:
    return random_scene(random.Random(seed))


def _digests(image_dir: pathlib.Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in image_dir.glob("*.png")}


def test_same_seed_same_records_and_image_bytes(tmp_path: pathlib.Path) -> None:
    first = make_samples(6, seed=3, image_dir=tmp_path / "a")
    second = make_samples(6, seed=3, image_dir=tmp_path / "b")
    assert first == second
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    assert len(_digests(tmp_path / "a")) == 6


def test_different_seeds_differ(tmp_path: pathlib.Path) -> None:
    a = make_samples(5, seed=1, image_dir=tmp_path / "a")
    b = make_samples(5, seed=2, image_dir=tmp_path / "b")
    assert [r["scene"] for r in a] != [r["scene"] for r in b]
    assert len({json.dumps(r["scene"], sort_keys=True) for r in a}) == 5


def test_records_are_llava_style_and_json_serialisable(tmp_path: pathlib.Path) -> None:
    records = make_samples(4, seed=0, image_dir=tmp_path)
    assert json.loads(json.dumps(records)) == records
    for i, record in enumerate(records):
        assert record["id"] == f"toy_{i:05d}"
        assert (tmp_path / record["image"]).is_file()
        human, gpt = record["conversations"]
        assert human["from"] == "human" and gpt["from"] == "gpt"
        assert human["value"].startswith("<image>\n")
        assert human["value"].removeprefix("<image>\n") in QUESTIONS
        scene = scene_from_dict(record["scene"])
        assert scene_to_dict(scene) == record["scene"]
        assert score(scene, gpt["value"]) == 1.0


def test_scene_dict_round_trip() -> None:
    for seed in range(50):
        scene = _scene(seed)
        assert scene_from_dict(json.loads(json.dumps(scene_to_dict(scene)))) == scene


def test_scene_rules() -> None:
    for seed in range(300):
        scene = _scene(seed)
        colours = [o.colour for o in scene.objects]
        assert 1 <= len(scene.objects) <= 4
        assert len(set(colours)) == len(colours)
        assert scene.background not in colours and scene.texture_colour not in colours
        cells = [o.position for o in scene.objects] + [scene.word_position]
        cells = [c for c in cells if c is not None]
        assert len(set(cells)) == len(cells)


def test_variety_of_scenes_and_templates() -> None:
    scenes = [_scene(seed) for seed in range(200)]
    assert {o.shape for s in scenes for o in s.objects} == set(SHAPES)
    assert {o.colour for s in scenes for o in s.objects} == set(COLOURS)
    assert {o.position for s in scenes for o in s.objects} == set(POSITIONS)
    assert {s.word for s in scenes} >= set(WORDS)
    texts = [describe(_scene(seed), random.Random(seed + 1)) for seed in range(50)]
    first_sentences = {t.split(".")[0] for t in texts}
    assert len(first_sentences) >= 35
    # The same scene is worded differently under different rngs.
    scene = _scene(0)
    assert len({describe(scene, random.Random(k)) for k in range(10)}) == 10


def test_description_length_and_characters() -> None:
    for seed in range(200):
        rng = random.Random(seed)
        text = describe(random_scene(rng), rng)
        assert 60 <= len(text.split()) <= 110, text
        assert re.fullmatch(r"[A-Za-z ,.]+", text), text


def test_own_descriptions_score_one() -> None:
    for seed in range(300):
        rng = random.Random(seed)
        scene = random_scene(rng)
        assert score(scene, describe(scene, rng)) == 1.0


def test_descriptions_of_other_scenes_score_low() -> None:
    results = []
    for seed in range(200):
        scene, other = _scene(seed), _scene(seed + 5000)
        results.append(score(scene, describe(other, random.Random(seed))))
        assert results[-1] < 0.5
    assert sum(results) / len(results) < 0.15
    assert score(_scene(0), "") == 0.0


def test_score_counts_wrong_positions_and_hallucinations() -> None:
    scene = Scene("blue", (ToyObject("circle", "red", "top left", "large"),))
    # facts: pair, position, count, background
    assert score(scene, "One object. A red circle in the top left. A blue background.") == 1.0
    assert score(scene, "One object. A red circle in the centre. A blue background.") == 0.75
    assert score(scene, "One object. A red circle. A green star. Blue background.") == 3 / 5
    assert score(scene, "Two objects on a blue background, a red circle in the top left.") == 0.75
    assert score(scene, "One object, a red circle in the top left, white stripes.") == 3 / 5


def test_objects_are_visible_in_their_colour() -> None:
    size = 224
    for seed in range(60):
        scene = _scene(seed)
        image = render(scene, size)
        assert image.mode == "RGB" and image.size == (size, size)
        pixels = image.load()
        for obj in scene.objects:
            left, top, right, bottom = cell_box(obj.position, size)
            inside = [pixels[x, y] for x in range(left, right) for y in range(top, bottom)]
            share = inside.count(COLOUR_RGB[obj.colour]) / len(inside)
            assert share > (0.2 if obj.size == "large" else 0.06), (seed, obj, share)


def test_word_is_drawn() -> None:
    scene = Scene("white", (ToyObject("square", "red", "centre", "small"),), word="book",
                  word_position="top left")  # fmt: skip
    with_word = render(scene)
    without = render(Scene("white", scene.objects))
    box = cell_box("top left")
    colours = {rgb: k for k, rgb in with_word.crop(box).getcolors(maxcolors=box[2] ** 2)}
    assert colours.get(COLOUR_RGB["black"], 0) > 150
    centre = cell_box("centre")
    assert with_word.crop(centre).tobytes() == without.crop(centre).tobytes()
