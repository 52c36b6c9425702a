"""The cost-realistic toy target computes exactly what the trained toy target computes.

:func:`~vllm_vispec.toy.costly_target.build_costly_target` widens every MLP and appends decoder
layers whose output projections are zero; vLLM runs all of that work, and every greedy token
must stay the trained target's. Also checked: the trained ViSpec draft is as lossless on it
and accepts drafts, and the builder is deterministic and refuses to remove work.
"""

from __future__ import annotations

import json
import pathlib

import pytest
from engines import counters, engine, greedy

from vllm_vispec.toy.costly_target import build_costly_target
from vllm_vispec.toy.world import prompts

TOY = pathlib.Path(__file__).resolve().parents[1] / "models" / "toy"
BENCH_SEED = 10_000  # the bench's toy prompt set


def _conversations(n: int) -> list[list[dict]]:
    return [
        [
            {
                "role": "user",
                "content": [
                    {"type": "image_pil", "image_pil": image},
                    {"type": "text", "text": question},
                ],
            }
        ]
        for _, image, question in prompts(n, BENCH_SEED)
    ]


@pytest.fixture(scope="module")
def costly(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return build_costly_target(TOY / "target", tmp_path_factory.mktemp("costly") / "target")


@pytest.mark.slow
def test_greedy_tokens_are_the_trained_targets(costly: pathlib.Path) -> None:
    conversations = _conversations(8)
    with engine(TOY / "target") as llm:
        expected = greedy(llm, conversations, max_tokens=96)
    with engine(costly) as llm:
        assert greedy(llm, conversations, max_tokens=96) == expected
    with engine(costly, TOY / "vispec") as llm:
        before = counters(llm)
        assert greedy(llm, conversations, max_tokens=96) == expected
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
