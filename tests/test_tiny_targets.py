"""The tiny local targets load in HF transformers and in a real vLLM engine, and agree.

Both engines run the same float32 weights, so greedy decoding must give identical tokens: any
difference would mean a config field that vLLM and transformers read differently (M-RoPE
sections, AnyRes grid, feature layer, tokenizer, chat template, MoE expert layout), which would
silently invalidate every test built on these targets.
"""

from __future__ import annotations

import gc
import hashlib
import pathlib

import pytest
import torch

from vllm_vispec.tools.bench.cpu_engine import cpu_engine_kwargs
from vllm_vispec.tools.testing.tiny_targets import (
    build_tiny_llava,
    build_tiny_llava_next,
    build_tiny_qwen2_5_vl,
    build_tiny_qwen3_vl,
    build_tiny_qwen3_vl_moe,
    make_test_image,
)
from vllm_vispec.tools.testing.tiny_tokenizers import (
    LLAVA_IMAGE_TOKEN,
    QWEN_IMAGE_TOKEN,
    VOCAB_SIZE,
)

NEW_TOKENS = 24
QUESTION = "Describe the image."

# (image token string, image tokens for a 224x224 picture, for a 320x200 picture)
EXPECTED = {
    "qwen": (QWEN_IMAGE_TOKEN, 64, 77),  # 320x200 -> 308x196 -> 22x14 patches -> 11x7 merged
    # base 4x4 + AnyRes 2x2 tiles of 4x4 (8x8, unpadded to 8x8 / 6x8) + one newline per row
    "llava": (LLAVA_IMAGE_TOKEN, 88, 70),
    "llava15": (LLAVA_IMAGE_TOKEN, 16, 16),  # one 56x56 crop of 4x4 patches, whatever the size
    "qwen3": (QWEN_IMAGE_TOKEN, 49, 60),  # 16-pixel patches: 320x200 -> 320x192 -> 10x6 merged
    "qwen3_moe": (QWEN_IMAGE_TOKEN, 49, 60),  # Qwen3-VL's vision tower
}
TARGETS = list(EXPECTED)


def _conversations(image_part: str) -> list[list[dict]]:
    """A text-only chat, a single-image chat and a two-image chat (square and non-square
    pictures)."""

    def image(seed: int, size: tuple[int, int] = (224, 224)) -> dict:
        return {"type": image_part, image_part: make_test_image(seed, size)}

    text = {"type": "text", "text": QUESTION}
    return [
        [{"role": "user", "content": [text]}],
        [{"role": "user", "content": [image(0), text]}],
        [{"role": "user", "content": [image(1), image(2, (320, 200)), text]}],
    ]


def _hf_greedy(path: pathlib.Path) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, greedy new ids) from HF transformers for each conversation."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    results = []
    for conversation in _conversations("image"):
        inputs = processor.apply_chat_template(
            conversation,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        )
        with torch.no_grad():
            out = model.generate(
                **inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False
            )
        prompt = inputs["input_ids"][0].tolist()
        results.append((prompt, out[0, len(prompt) :].tolist()))
    return results


def _target(name: str, request: pytest.FixtureRequest) -> pathlib.Path:
    return request.getfixturevalue(f"{name}_target")


@pytest.mark.parametrize("name", TARGETS)
def test_hf_loads_and_generates(name: str, request: pytest.FixtureRequest) -> None:
    from transformers import AutoConfig, AutoTokenizer

    path = _target(name, request)
    config = AutoConfig.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    text = config.get_text_config()
    assert len(tokenizer) == text.vocab_size == VOCAB_SIZE
    assert text.hidden_size // text.num_attention_heads == 32
    image_token, per_square, per_wide = EXPECTED[name]
    image_id = tokenizer.convert_tokens_to_ids(image_token)
    assert image_id == config.image_token_id

    (prompt0, new0), (prompt1, new1), (prompt2, new2) = _hf_greedy(path)
    assert image_id not in prompt0
    assert prompt1.count(image_id) == per_square
    assert prompt2.count(image_id) == per_square + per_wide
    assert len(new0) == len(new1) == len(new2) == NEW_TOKENS
    assert image_id not in new0 + new1 + new2  # placeholders have zeroed lm_head rows
    assert new1 != new2  # the pictures matter


@pytest.mark.slow
@pytest.mark.parametrize("name", TARGETS)
def test_vllm_matches_hf_greedy(name: str, request: pytest.FixtureRequest) -> None:
    from vllm import LLM, SamplingParams

    path = _target(name, request)
    expected = _hf_greedy(path)

    llm = LLM(model=str(path), **cpu_engine_kwargs())
    try:
        # min_tokens == max_tokens masks EOS exactly as HF's min_new_tokens does.
        params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS)
        outputs = llm.chat(_conversations("image_pil"), params, use_tqdm=False)
        # Rendered prompt + multi_modal_data, the path the benchmarks use. The chat template
        # already emits BOS (LLaVA), so the tokenizer must not add a second one.
        prompt = llm.get_tokenizer().apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}],
            add_generation_prompt=True,
            tokenize=False,
        )
        raw = llm.generate(
            {"prompt": prompt, "multi_modal_data": {"image": make_test_image(0)}},
            params,
            use_tqdm=False,
            tokenization_kwargs={"add_special_tokens": False},
        )
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()

    for output, (hf_prompt, hf_new) in zip(outputs, expected, strict=True):
        assert list(output.prompt_token_ids) == hf_prompt
        assert list(output.outputs[0].token_ids) == hf_new
    assert list(raw[0].prompt_token_ids) == expected[1][0]
    assert list(raw[0].outputs[0].token_ids) == expected[1][1]


def _digests(folder: pathlib.Path) -> dict[str, str]:
    return {
        f.name: hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(folder.iterdir())
        if f.is_file()
    }


@pytest.mark.parametrize(
    "build",
    [
        build_tiny_qwen2_5_vl,
        build_tiny_llava_next,
        build_tiny_llava,
        build_tiny_qwen3_vl,
        build_tiny_qwen3_vl_moe,
    ],
)
def test_builds_are_deterministic(build, tmp_path: pathlib.Path) -> None:
    first = _digests(build(tmp_path / "a", seed=3))
    assert "model.safetensors" in first and "tokenizer.json" in first
    assert _digests(build(tmp_path / "b", seed=3)) == first
    other = _digests(build(tmp_path / "c", seed=4))
    assert other["model.safetensors"] != first["model.safetensors"]
    assert other["tokenizer.json"] == first["tokenizer.json"]


def test_make_test_image_is_deterministic() -> None:
    a, b = make_test_image(5), make_test_image(5)
    assert a.size == (224, 224) and a.mode == "RGB"
    assert a.tobytes() == b.tobytes()
    assert make_test_image(6).tobytes() != a.tobytes()
    assert make_test_image(5, (64, 32)).size == (64, 32)
