"""The toy worlds still draw the samples that the shipped toy models were trained on.

``models/toy``, ``models/grounded`` and ``models/content`` hold targets and drafts trained on
samples of :mod:`vllm_vispec.tools.toy.world`, :mod:`vllm_vispec.tools.toy.grounded_world` and
:mod:`vllm_vispec.tools.toy.content_world` that are never stored, only regenerated from seeds. A
change to a world (scenes, wording, drawing, seeding, image format) would leave those models,
and the README's figures about them, trained on data the code no longer makes; the "same seed
twice" tests cannot see that, these digests can.

A failure means the shipped models no longer match their training data. If the change is meant,
retrain them, then paste the new digests below:

* toy world: ``python benchmarks/toy_world.py --retrain`` (target and drafts, about 40 minutes
  on 2 cores);
* grounded world: ``python benchmarks/train_strip_target.py --work DIR`` with an empty ``DIR`` (the
  target; rerun the same command until it reaches its last step), then ``python
  benchmarks/toy_world.py --world grounded --retrain --prompts 48 --max-tokens 64`` (the drafts);
* content world: ``python benchmarks/train_strip_target.py --world content --work DIR`` with the
  options in ``models/content/target/grounded_recipe.json``, then, with the drafts in
  ``models/content`` removed and an empty ``/tmp/vispec-toy/content``, ``python
  benchmarks/draft_kinds.py --world content`` (trains and ships the drafts).

Texts and scenes are pinned for every sample, pixels (decoded PNGs, ``tobytes()``) only for
pictures drawn with Pillow's shape primitives. Toy-world pictures that show a word are left out
of the pixel digest: their glyphs come from Pillow's bundled font through FreeType and, where
libfribidi is installed, Raqm layout, which differ between installs.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import runpy
from typing import Any

import PIL
import pytest
from PIL import Image

from vllm_vispec.tools.toy import world, world_module

ROOT = pathlib.Path(__file__).resolve().parents[1]
N = 32
"""Samples pinned per stream: its first ``N`` (each depends only on its seed and index, so these
are among the samples training used)."""

RETRAIN = {
    "toy": "python benchmarks/toy_world.py --retrain",
    "grounded": "python benchmarks/train_strip_target.py --work EMPTY_DIR until done, then python "
    "benchmarks/toy_world.py --world grounded --retrain --prompts 48 --max-tokens 64",
    "content": "python benchmarks/train_strip_target.py --world content --work EMPTY_DIR with the "
    "recipe in models/content/target/grounded_recipe.json, then remove models/content's drafts "
    "and run python benchmarks/draft_kinds.py --world content",
}

# (world, stream) -> (sha256 of the records' texts and scenes, sha256 of their pixels)
EXPECTED = {
    ("toy", "target"): (
        "3ef79aac77d9b09788f77b6d840187083779880d0ea225b1883f64370866cc4b",
        "3b7a097febb9f50cfe7839dc09b16d28ba231e89d175239790bea66a88428189",
    ),
    ("toy", "drafts"): (
        "47bc82eacd12730b913b1d2c8c40e8cdae26e36e9a868027113b1598c4a0a5cb",
        "2c60e8b5a196c0cf26a850bdc151a51e58ef4c54a5edf718be188dafd259767a",
    ),
    ("grounded", "target"): (
        "de832faf88ace3427a2853491078b53ebc29854bb61db5a93b3735655399d1f9",
        "e99509786180b489e2b646e76c903fc072895aa70bfddf48a448ed41451a56f4",
    ),
    ("grounded", "drafts"): (
        "a8c11110cdb1a0167e596d8ffe365ae0ed86a8a6f45a671987f7dc58a0e9fde4",
        "28e7851b0fe88732f531cc2bfd0b228c5d3953879dcde490b4e41d96693ee6ff",
    ),
    ("content", "target"): (
        "491a5f4a6d8d1e7db65cdf48ab2da4335edef28667e0bbcd04f6299b4a0ca973",
        "edb507318de8075d7020ce9cc703cb56fc7b1dfc243b211e8f728278a0ee6997",
    ),
    ("content", "drafts"): (
        "681bd3884cc1375e09d4f9c0ec86aca06c6c93b0d7b4945b73326f55d0521a69",
        "52b0185e82d8f787b65bb72cd014371020373be4929dea372ebb6812172c71fb",
    ),
}


def _draft_seed() -> int:
    """The seed benchmarks/toy_world.py draws both worlds' draft training samples from."""
    return runpy.run_path(str(ROOT / "benchmarks" / "toy_world.py"))["DRAFT_SEED"]


def _records(make_samples: Any, seed: int, out: pathlib.Path, **options: Any) -> list[tuple]:
    """(record, picture read back from its PNG) for the first ``N`` samples, as training reads
    them."""
    samples = []
    for record in make_samples(N, seed, out, **options):
        with Image.open(out / record["image"]) as image:
            samples.append((record, image.convert("RGB")))
    return samples


def _toy_target(tmp_path: pathlib.Path) -> list[tuple]:
    """The shipped toy target's samples: ``train_toy_target`` draws them at ``seed + 2``."""
    from vllm_vispec.tools.toy.target import TargetRecipe

    shipped = json.loads((ROOT / "models/toy/target/toy_training.json").read_text())["recipe"]
    recipe = TargetRecipe(**shipped)
    return _records(world.make_samples, recipe.seed + 2, tmp_path, size=recipe.image_size)


def _strip_target(name: str, monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """A shipped strip world target's first batches, drawn by ``training_batch`` itself (strips
    seeded by step and index) and caught on their way to the processor. Its records have no
    scene: question and answer state every fact of it."""
    import torch

    from vllm_vispec.tools.toy.grounded_target import GroundedRecipe, training_batch
    from vllm_vispec.tools.train import data

    shipped = json.loads((ROOT / f"models/{name}/target/grounded_recipe.json").read_text())
    recipe = GroundedRecipe(**shipped)
    seen = []

    def encode(processor, messages, images, record_id, expansions):
        (image,) = images
        seen.append(({"id": record_id, "messages": messages}, image))

    def collate(processor, examples):
        return {
            "input_ids": torch.zeros(1, 1, dtype=torch.long),
            "loss_mask": torch.ones(1, 1, dtype=torch.bool),
        }

    monkeypatch.setattr(data, "encode", encode)
    monkeypatch.setattr(data, "collate", collate)
    for step in range(-(-N // recipe.batch_size)):
        training_batch(None, recipe, step, {})
    return seen[:N]


def _digests(samples: list[tuple]) -> tuple[str, str]:
    """sha256 of the records (JSON, keys sorted) and of the pixels of the pictures without a
    word (size, mode and ``tobytes()`` of each)."""
    text = json.dumps([r for r, _ in samples], sort_keys=True).encode()
    pixels = hashlib.sha256()
    for record, image in samples:
        if record.get("scene", {}).get("word") is None:
            pixels.update(f"{record['id']} {image.mode} {image.size}".encode())
            pixels.update(image.tobytes())
    return hashlib.sha256(text).hexdigest(), pixels.hexdigest()


@pytest.mark.parametrize(
    ("world_name", "stream"), list(EXPECTED), ids=[f"{w}-{s}" for w, s in EXPECTED]
)
def test_training_samples_match_the_shipped_models(
    world_name: str, stream: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if (world_name, stream) == ("toy", "target"):
        samples = _toy_target(tmp_path)
    elif stream == "target":
        samples = _strip_target(world_name, monkeypatch)
    else:
        samples = _records(world_module(world_name).make_samples, _draft_seed(), tmp_path)
    assert len(samples) == N
    text, pixels = _digests(samples)
    expected_text, expected_pixels = EXPECTED[world_name, stream]
    stale = (
        f"the shipped models/{world_name} models no longer match their training data: retrain "
        f"them ({RETRAIN[world_name]}) and update EXPECTED in {pathlib.Path(__file__).name}"
    )
    assert text == expected_text, (
        f"{world_name} world {stream} samples (texts, scenes) changed; {stale}"
    )
    assert pixels == expected_pixels, (
        f"{world_name} world {stream} pictures changed (Pillow {PIL.__version__}; a Pillow "
        f"upgrade that draws shapes differently counts too); {stale}"
    )
