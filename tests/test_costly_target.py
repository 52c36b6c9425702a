"""A cost-realistic toy target computes exactly what its trained toy target computes.

:func:`~vllm_vispec.tools.toy.costly_target.build_costly_target` widens every MLP and appends
decoder layers whose output projections are zero; vLLM runs all of that work, and every greedy token
must stay the trained target's, in every world with a trained target. Also: the trained ViSpec
draft is as lossless on it and accepts drafts, the shipped strip-world targets read held-out
strips (better than copying the question can), and the builder is deterministic and refuses to
remove work.
"""

from __future__ import annotations

import json
import pathlib

import pytest
from engines import counters, engine, greedy

from vllm_vispec.tools.toy import world_module
from vllm_vispec.tools.toy.costly_target import build_costly_target

MODELS = pathlib.Path(__file__).resolve().parents[1] / "models"
TOY = MODELS / "toy"
BENCH_SEED = 10_000  # the bench's prompt sets
SHIPPED = ("toy", "grounded", "content")
"""The worlds whose trained target ships."""
READS = {"grounded": 0.9, "content": 0.7}
"""Least held-out score of a strip world's shipped target (its 128-strip figures: 1.00 and 0.78;
text alone scores about 0.21 on grounded strips and 0.5 on content strips, whose colours the
question gives)."""


def _prompts(name: str, n: int) -> tuple[list[list[dict]], list]:
    """Held-out conversations of a world, and their scenes."""
    items = world_module(name).prompts(n, BENCH_SEED)
    conversations = [
        [
            {
                "role": "user",
                "content": [
                    {"type": "image_pil", "image_pil": image},
                    {"type": "text", "text": question},
                ],
            }
        ]
        for _, image, question in items
    ]
    return conversations, [world_module(name).scene_from_dict(r["scene"]) for r, _, _ in items]


@pytest.fixture(scope="module")
def costly(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return build_costly_target(TOY / "target", tmp_path_factory.mktemp("costly") / "toy")


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_greedy_tokens_are_the_trained_targets(
    name: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Also: the shipped strip-world targets read their held-out strips."""
    trained = MODELS / name / "target"
    costly = build_costly_target(trained, tmp_path_factory.mktemp("costly") / name)
    conversations, scenes = _prompts(name, 8)
    tokens = 96 if name in READS else 48  # the strip worlds' answers are scored whole
    with engine(trained) as llm:
        expected = greedy(llm, conversations, max_tokens=tokens)
        texts = [llm.get_tokenizer().decode(ids, skip_special_tokens=True) for ids in expected]
    if name in READS:
        scores = [world_module(name).score(s, t) for s, t in zip(scenes, texts, strict=True)]
        assert sum(scores) / len(scores) >= READS[name], texts
    with engine(costly) as llm:
        assert greedy(llm, conversations, max_tokens=tokens) == expected
    with engine(costly, MODELS / name / "vispec") as llm:
        before = counters(llm)
        assert greedy(llm, conversations, max_tokens=tokens) == expected
        after = counters(llm)
    accepted = after["vllm:spec_decode_num_accepted_tokens"] - before.get(
        "vllm:spec_decode_num_accepted_tokens", 0
    )
    assert accepted > 100, "the trained draft should be accepted on its own target's function"


def test_the_extra_work_is_there_and_the_build_is_reused(costly: pathlib.Path) -> None:
    text = json.loads((costly / "config.json").read_text())["text_config"]
    trained = json.loads((TOY / "target" / "config.json").read_text())["text_config"]
    assert text["num_hidden_layers"] > trained["num_hidden_layers"]
    assert text["intermediate_size"] > trained["intermediate_size"]
    weights = costly / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    build_costly_target(TOY / "target", costly)
    assert weights.stat().st_mtime_ns == mtime, "an identical build should be reused"


def test_it_refuses_to_remove_work(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="only adds work"):
        build_costly_target(TOY / "target", tmp_path / "t", intermediate_size=8)
