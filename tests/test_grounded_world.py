"""The grounded world is deterministic, image-ordered, scored right, and its target resumes.

Its held-out accuracy is the evidence that the toy target reads its images, so silent changes
in determinism, in what the scorer counts, in the 256-image-token geometry or in the 4-tokens-
per-cell alignment (which the target relies on to find the cell it describes) must fail here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import random

import pytest

from vllm_vispec.tools.toy.grounded_world import (
    CELL_WIDTH,
    COLOUR_RGB,
    COLOURS,
    COUNTS,
    EVAL_CELLS,
    HEIGHT,
    QUESTION,
    SHAPES,
    TOKENS_PER_CELL,
    Cell,
    StripScene,
    describe,
    image_tokens,
    make_samples,
    parse,
    phrase,
    prompts,
    random_scene,
    render,
    scene_from_dict,
    scene_to_dict,
    score,
    tokenizer_corpus,
)


def _digests(image_dir: pathlib.Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in image_dir.glob("*.png")}


@pytest.fixture(scope="module")
def tiny_target(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    from vllm_vispec.tools.testing.tiny_targets import build_tiny_qwen2_5_vl

    return build_tiny_qwen2_5_vl(
        tmp_path_factory.mktemp("grounded-target"), extra_corpus=tokenizer_corpus(1)
    )


def test_same_seed_same_records_and_png_bytes(tmp_path: pathlib.Path) -> None:
    first = make_samples(4, seed=5, image_dir=tmp_path / "a")
    second = make_samples(4, seed=5, image_dir=tmp_path / "b")
    assert first == second
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    assert len(_digests(tmp_path / "a")) == 4
    other = make_samples(4, seed=6, image_dir=tmp_path / "c")
    assert [r["scene"] for r in other] != [r["scene"] for r in first]
    assert make_samples(2, seed=5, image_dir=tmp_path / "d") == first[:2]


def test_records_are_llava_style(tmp_path: pathlib.Path) -> None:
    records = make_samples(3, seed=0, image_dir=tmp_path, n_cells=3)
    assert json.loads(json.dumps(records)) == records
    for record in records:
        human, gpt = record["conversations"]
        assert (human["from"], gpt["from"]) == ("human", "gpt")
        assert human["value"] == "<image>\n" + QUESTION
        scene = scene_from_dict(record["scene"])
        assert scene_to_dict(scene) == record["scene"] and len(scene.cells) == 3
        assert gpt["value"] == describe(scene)
        with render(scene) as image, (tmp_path / record["image"]).open("rb") as f:
            assert image.size == (3 * CELL_WIDTH, HEIGHT)
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_score_true_description_is_one_and_corruptions_lower() -> None:
    scene = StripScene(
        (Cell(2, "red", "circle"), Cell(1, "blue", "star"), Cell(3, "green", "cross"))
    )
    truth = describe(scene)
    assert truth == "two red circles, one blue star, three green crosses."
    assert score(scene, truth) == 1.0
    assert score(scene, truth.upper()) == 1.0
    one_wrong = truth.replace("blue", "yellow")
    assert score(scene, one_wrong) == pytest.approx(8 / 9)
    swapped = "one blue star, two red circles, three green crosses."  # order is a fact
    assert score(scene, swapped) == pytest.approx(3 / 9)
    longer = truth.removesuffix(".") + ", one white ring."  # a hallucinated fourth cell
    assert score(scene, longer) == pytest.approx(9 / 12)
    assert score(scene, "two red circles.") == pytest.approx(3 / 9)
    assert score(scene, "") == 0.0
    assert score(scene, "a picture of some shapes") == 0.0
    for seed in range(30):
        scene = random_scene(random.Random(seed))
        assert score(scene, describe(scene)) == 1.0


def test_facts_follow_the_image_left_to_right() -> None:
    """The i-th phrase is the i-th cell from the left: reordering the cells reorders the text,
    and the pixels of cell i have the colour the i-th phrase names."""
    rng = random.Random(3)
    scene = random_scene(rng)
    image = render(scene)
    phrases = parse(describe(scene))
    assert len(phrases) == EVAL_CELLS
    for i, (cell, got) in enumerate(zip(scene.cells, phrases, strict=True)):
        assert got is not None and got[1] == cell.colour
        left = i * CELL_WIDTH
        colours = {
            image.getpixel((x, y))
            for x in range(left, left + CELL_WIDTH)
            for y in range(0, HEIGHT, 2)
        }
        assert COLOUR_RGB[cell.colour] in colours
        others = {COLOUR_RGB[c] for c in COLOURS if c != cell.colour}
        assert not colours & others  # nothing of another cell leaks in
    reordered = StripScene(tuple(reversed(scene.cells)))
    assert parse(describe(reordered)) == list(reversed(phrases))
    # the same multiset of cells in another order is not the same description
    assert describe(reordered) != describe(scene) or scene.cells == reordered.cells


def test_scenes_vary() -> None:
    rng = random.Random(0)
    cells = [c for _ in range(100) for c in random_scene(rng).cells]
    assert {c.count for c in cells} == set(COUNTS)
    assert {c.colour for c in cells} == set(COLOURS)
    assert {c.shape for c in cells} == set(SHAPES)


def test_256_token_prompt_set(tiny_target: pathlib.Path) -> None:
    from transformers import AutoProcessor

    from vllm_vispec.tools.toy.grounded_target import messages

    processor = AutoProcessor.from_pretrained(tiny_target)
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert image_tokens(EVAL_CELLS) == 256
    for _record, image, question in prompts(2, seed=11):
        assert image.size == (896, 224)
        text = processor.apply_chat_template(
            messages(question), tokenize=False, add_generation_prompt=True
        )
        ids = processor(text=[text], images=[image], return_tensors="pt")["input_ids"][0]
        assert int((ids == image_pad).sum()) >= 256


def test_every_cell_phrase_is_as_many_tokens_as_the_cell_is_wide(
    tiny_target: pathlib.Path,
) -> None:
    """Answer token k describes image column k + const: each phrase with its separator is
    exactly TOKENS_PER_CELL tokens, in the first cell and in later ones."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_target)
    for count in COUNTS:
        for colour in COLOURS:
            for shape in SHAPES:
                text = phrase(Cell(count, colour, shape))
                for piece in (text + ",", " " + text + ",", " " + text + "."):
                    assert len(tokenizer(piece)["input_ids"]) == TOKENS_PER_CELL, piece
    scene = random_scene(random.Random(1))
    assert len(tokenizer(describe(scene))["input_ids"]) == TOKENS_PER_CELL * EVAL_CELLS


def test_records_encode_for_draft_training(tmp_path: pathlib.Path, tiny_target) -> None:
    from transformers import AutoProcessor

    from vllm_vispec.tools.train.data import build_examples

    processor = AutoProcessor.from_pretrained(tiny_target)
    records = make_samples(2, seed=1, image_dir=tmp_path, n_cells=2)
    examples, report = build_examples(records, processor, tmp_path, max_length=4096)
    assert len(examples) == 2 and not report.skipped
    (start, end), = examples[0].answers  # fmt: skip
    assert end - start == 2 * TOKENS_PER_CELL + 2  # the answer, <|im_end|> and "\n"


def test_training_resumes_exactly(tmp_path: pathlib.Path) -> None:
    """Two steps, then two more after a resume, equal four steps in one go."""
    import torch
    from safetensors.torch import load_file

    from vllm_vispec.tools.toy.grounded_target import GroundedRecipe, train_grounded_target

    recipe = GroundedRecipe(n_cells=1, batch_size=2, max_steps=4, warmup_steps=1,
                            checkpoint_every=2, log_every=1)  # fmt: skip
    torch.set_num_threads(1)
    straight = train_grounded_target(tmp_path / "straight", recipe)
    halves = tmp_path / "halves"
    train_grounded_target(halves, recipe, max_minutes=0.0)  # stops after step 1
    state = torch.load(halves / "train_state.pt", weights_only=False)
    assert state["step"] == 1
    with (halves / "progress.jsonl").open("a") as f:  # logged after the checkpoint, then killed
        f.write(json.dumps({"step": 2, "loss": 9.9}) + "\n")
    train_grounded_target(halves, recipe)
    a, b = load_file(straight / "model.safetensors"), load_file(halves / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    progress = [json.loads(x) for x in (halves / "progress.jsonl").read_text().splitlines()]
    assert [p["step"] for p in progress] == [1, 2, 3, 4]
    assert all(p["loss"] != 9.9 for p in progress)
    with pytest.raises(ValueError, match="different recipe"):
        train_grounded_target(halves, dataclasses.replace(recipe, lr=1e-3))
