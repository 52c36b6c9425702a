"""The content world asks for image facts in the question's order, so they must be found by
content: its scenes, questions, answers and scorer must keep that property, deterministically.
"""

from __future__ import annotations

import collections
import json
import pathlib
import random

import pytest

from vllm_vispec.tools.toy import WORLDS, world_module
from vllm_vispec.tools.toy.content_world import (
    EVAL_CELLS,
    AskedScene,
    describe,
    fact_token,
    ink,
    make_samples,
    parse,
    prompts,
    question,
    random_scene,
    render,
    scene_from_dict,
    scene_to_dict,
    score,
    tokenizer_corpus,
)
from vllm_vispec.tools.toy.grounded_world import CELL_WIDTH, COLOUR_RGB, HEIGHT, Cell


def _scene() -> AskedScene:
    cells = (Cell(2, "red", "circle"), Cell(1, "blue", "star"), Cell(3, "green", "cross"))
    return AskedScene(cells, ("green", "red"))


def test_registered_as_a_world() -> None:
    assert "content" in WORLDS
    assert world_module("content").NAME == "content"


def test_answer_follows_the_question() -> None:
    scene = _scene()
    assert question(scene) == "Describe the green cell, the red cell."
    assert describe(scene) == "green three crosses, red two circles."
    assert scene.cell("blue") == Cell(1, "blue", "star")


def test_score_counts_facts_in_the_questions_order() -> None:
    scene = _scene()
    truth = describe(scene)
    assert score(scene, truth) == 1.0
    assert score(scene, truth.upper()) == 1.0
    assert score(scene, "green three crosses, red one circle.") == pytest.approx(5 / 6)
    # the strip's left-to-right order is not the question's: the cells swap places
    assert score(scene, "red two circles, green three crosses.") == pytest.approx(0.0)
    assert score(scene, truth.removesuffix(".") + ", blue one star.") == pytest.approx(6 / 9)
    assert score(scene, "green three crosses.") == pytest.approx(3 / 6)
    assert score(scene, "") == 0.0 and score(scene, "some shapes") == 0.0
    assert parse("green three crosses, nonsense.") == [("green", "three", "cross"), None]
    for seed in range(30):
        scene = random_scene(random.Random(seed))
        assert score(scene, describe(scene)) == 1.0


def test_where_the_described_cell_sits_is_random() -> None:
    """No fixed offset leads from an answer phrase to its cell: the j-th asked colour's cell is
    at every position, about equally often."""
    rng = random.Random(0)
    places = collections.Counter()
    for _ in range(800):
        scene = random_scene(rng)
        colours = [c.colour for c in scene.cells]
        assert len(set(colours)) == EVAL_CELLS
        assert sorted(scene.asked) == sorted(colours)
        places[colours.index(scene.asked[1])] += 1
    assert set(places) == set(range(EVAL_CELLS))
    assert min(places.values()) > 800 / EVAL_CELLS / 2


def test_the_picture_shows_each_colour_in_its_cell_and_a_copy_per_third() -> None:
    for seed in range(4):
        scene = random_scene(random.Random(seed))
        image = render(scene)
        assert image.size == (EVAL_CELLS * CELL_WIDTH, HEIGHT)
        third = HEIGHT // 3
        for i, cell in enumerate(scene.cells):
            fill = COLOUR_RGB[cell.colour]
            assert ink(fill) not in COLOUR_RGB.values() and ink(fill) != fill
            for k in range(3):
                band = {image.getpixel((x, y)) for x in range(i * CELL_WIDTH, (i + 1) * CELL_WIDTH)
                        for y in range(k * third, (k + 1) * third)}  # fmt: skip
                assert band == ({fill, ink(fill)} if k < cell.count else {fill})


def test_same_seed_same_records(tmp_path: pathlib.Path) -> None:
    first = make_samples(4, seed=5, image_dir=tmp_path / "a")
    assert first == make_samples(4, seed=5, image_dir=tmp_path / "b")
    assert [(tmp_path / "a" / r["image"]).read_bytes() for r in first] == [
        (tmp_path / "b" / r["image"]).read_bytes() for r in first
    ]
    assert make_samples(2, seed=5, image_dir=tmp_path / "c") == first[:2]
    assert make_samples(4, seed=6, image_dir=tmp_path / "d") != first
    assert json.loads(json.dumps(first)) == first
    for record in first:
        scene = scene_from_dict(record["scene"])
        assert scene_to_dict(scene) == record["scene"]
        human, gpt = record["conversations"]
        assert human["value"] == "<image>\n" + question(scene)
        assert gpt["value"] == describe(scene)
    (_, image, asked), = prompts(1, seed=5)  # fmt: skip
    assert image.size == (896, 224) and asked == question(scene_from_dict(first[0]["scene"]))


def test_image_facts_are_counts_and_shapes() -> None:
    assert fact_token(" two") and fact_token("crosses") and fact_token("star")
    assert not fact_token(" red") and not fact_token(",") and not fact_token(".")
    corpus = tokenizer_corpus(0, n=50)
    assert len(corpus) == 100 and corpus[0].startswith("Describe the ")


@pytest.mark.parametrize(
    ("cells", "asked", "error"),
    [
        ((Cell(1, "red", "star"), Cell(2, "red", "ring")), ("red",), "its own colour"),
        ((Cell(1, "red", "star"),), ("blue",), "no cell has"),
        ((Cell(1, "red", "star"),), (), "one or more"),
        ((Cell(1, "red", "star"),), ("red", "red"), "one or more distinct"),
    ],
)
def test_bad_scenes_are_refused(cells: tuple, asked: tuple, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        AskedScene(cells, asked)
    with pytest.raises(ValueError, match="1 to 8 cells"):
        random_scene(random.Random(0), 9)


def test_question_items_are_as_many_tokens_as_answer_phrases(tmp_path: pathlib.Path) -> None:
    """A target finds the colour to describe next at a fixed offset back in the question: with
    the tokenizer its trainer builds, every question item and every answer phrase is 4 tokens."""
    from transformers import AutoTokenizer

    from vllm_vispec.tools.testing.tiny_targets import build_tiny_qwen2_5_vl

    target = build_tiny_qwen2_5_vl(tmp_path, extra_corpus=tokenizer_corpus(1))
    tokenizer = AutoTokenizer.from_pretrained(target)
    scene = random_scene(random.Random(2))
    items = question(scene).removeprefix("Describe").removesuffix(".").split(",")
    phrases = describe(scene).removesuffix(".").split(",")
    for piece in [*items, *phrases]:
        assert len(tokenizer(piece + ",")["input_ids"]) == 4, piece
    assert len(tokenizer(question(scene))["input_ids"]) == 1 + 4 * EVAL_CELLS
    assert len(tokenizer(describe(scene))["input_ids"]) == 4 * EVAL_CELLS
