"""Tokenizers and chat templates of the tiny targets, trained here (these machines have no hub).

Qwen-style byte-level BPE and Llama-style BPE with byte fallback, trained deterministically on a
fixed corpus to exactly :data:`VOCAB_SIZE` tokens with the special tokens at fixed ids, so the
targets' configs and vLLM's chat path can rely on them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any

__all__ = [
    "LLAVA_CHAT_TEMPLATE",
    "LLAVA_IMAGE_TOKEN",
    "QWEN_CHAT_TEMPLATE",
    "QWEN_IMAGE_TOKEN",
    "QWEN_SPECIAL_TOKENS",
    "VOCAB_SIZE",
    "llama_tokenizer",
    "qwen_tokenizer",
]

VOCAB_SIZE = 512
"""Tokenizer size == config ``vocab_size`` for both targets (no unused embedding rows)."""

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
QWEN_IMAGE_TOKEN = "<|image_pad|>"
LLAVA_IMAGE_TOKEN = "<image>"

# Qwen2-VL style: a default system turn, image/video parts become vision_start/pad/end.
# Accepts HF-style parts ({"type": "image"}) and OpenAI-style ones ("image_url").
QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or content['type'] == 'image_url' or 'image' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or content['type'] == 'video_url' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Vicuna v1 style (llava-v1.6-vicuna): "<s>SYSTEM USER: <image>\ntext ASSISTANT: reply</s>".
# The template emits BOS itself; vLLM's chat path and HF processors then add no second one.
LLAVA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set sys = messages[0]['content'] if messages[0]['content'] is string "
    "else messages[0]['content'] | map(attribute='text') | join(' ') %}"
    "{% set loop_messages = messages[1:] %}"
    "{% else %}"
    "{% set sys = 'A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human\\'s questions.' %}"
    "{% set loop_messages = messages %}"
    "{% endif %}"
    "{{ sys }}"
    "{% for message in loop_messages %}"
    "{% if message['role'] == 'user' %} USER: {% else %} ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or content['type'] == 'image_url' or 'image' in content %}"
    "<image>\n{% endif %}{% endfor %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %} ASSISTANT:{% endif %}"
)


# --------------------------------------------------------------------------------------------
# Tokenizer corpus


_COLOURS = ("red", "green", "blue", "yellow", "black", "white", "orange", "purple", "grey", "pink")
_SHAPES = ("circle", "square", "triangle", "line", "box", "dot", "star", "ring", "cross", "stripe")
_PLACES = ("left", "right", "top", "bottom", "centre", "corner", "middle", "edge")
_VERBS = ("shows", "contains", "has", "depicts", "displays", "holds")
_NOUNS = tuple(
    "person woman man child dog cat horse bird car bus train bicycle boat tree flower house "
    "building window door table chair plate bottle phone laptop book clock street river mountain "
    "beach kitchen garden field sky cloud road bridge sign umbrella kite".split()
)
_ADJECTIVES = tuple(
    "small large bright dark round tall short wooden metal old new happy quiet busy empty crowded "
    "sunny cloudy striped shiny".split()
)
_PHRASES = (
    "Describe the image in detail.",
    "What is shown in this picture?",
    "How many objects are there?",
    "The image is a photo of a cat sitting on a table next to a cup of coffee.",
    "The quick brown fox jumps over the lazy dog.",
    "A chat between a curious human and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    "You are a helpful assistant. Please answer the question about the picture.",
    "There are two people walking along the street in the rain with umbrellas.",
    "Speculative decoding drafts several tokens and the target model verifies them at once.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 12 16 32 64 128 256 512 1024.",
    "USER: ASSISTANT: system user assistant Picture Video",
)


def _corpus(seed: int = 1234) -> list[str]:
    """A few thousand deterministic English-like lines about pictures (tokenizer training)."""
    rng = random.Random(seed)
    lines = list(_PHRASES)
    for _ in range(2000):
        lines.append(
            f"The {rng.choice(('image', 'picture', 'photo', 'scene'))} {rng.choice(_VERBS)} "
            f"a {rng.choice(_ADJECTIVES)} {rng.choice(_COLOURS)} {rng.choice(_NOUNS)} in the "
            f"{rng.choice(_PLACES)}, and {rng.randint(2, 99)} {rng.choice(_COLOURS)} "
            f"{rng.choice(_SHAPES)}s near the {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}."
        )
        lines.append(
            f"Is there a {rng.choice(_NOUNS)} on the {rng.choice(_PLACES)}? Yes, "
            f"{rng.randint(1, 9)} {rng.choice(_NOUNS)}s are {rng.choice(_ADJECTIVES)} and "
            f"{rng.choice(_COLOURS)}."
        )
    return lines


def _train_bpe(
    pre_tokenizer: Any, vocab_size: int, alphabet: list[str], extra: Sequence[str] = ()
) -> tuple[dict, list]:
    """Train a BPE model on the built-in corpus (+ ``extra`` lines); (vocab, merges) in id order."""
    from tokenizers import Tokenizer, models, normalizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=alphabet, show_progress=False, min_frequency=2
    )
    tok.train_from_iterator([*_corpus(), *extra], trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = dict(sorted(model["vocab"].items(), key=lambda kv: kv[1]))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    if len(vocab) != vocab_size:
        raise RuntimeError(f"BPE training gave {len(vocab)} tokens, wanted {vocab_size}")
    return vocab, merges


def qwen_tokenizer(extra_corpus: Sequence[str] = ()) -> Any:
    """Byte-level BPE like Qwen2's: 504 trained tokens, then the 8 special tokens (ids 504-511)."""
    from tokenizers import AddedToken, Regex, pre_tokenizers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    n_trained = VOCAB_SIZE - len(QWEN_SPECIAL_TOKENS)
    vocab, merges = _train_bpe(pre, n_trained, pre_tokenizers.ByteLevel.alphabet(), extra_corpus)
    for i, token in enumerate(QWEN_SPECIAL_TOKENS):
        vocab[token] = n_trained + i
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
        errors="replace",
    )
    tokenizer.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS]
    )
    _check_ids(tokenizer, {t: n_trained + i for i, t in enumerate(QWEN_SPECIAL_TOKENS)})
    return tokenizer


def llama_tokenizer() -> Any:
    """Llama/sentencepiece-style BPE: <unk> <s> </s>, 256 byte-fallback tokens, trained pieces
    with the ``▁`` word prefix, and ``<image>`` as the last id (511)."""
    from tokenizers import AddedToken, pre_tokenizers
    from transformers import LlamaTokenizer

    specials = {"<unk>": 0, "<s>": 1, "</s>": 2}
    n_fixed = len(specials) + 256
    n_trained = VOCAB_SIZE - n_fixed - 1
    pre = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trained, merges = _train_bpe(pre, n_trained, [])
    vocab = dict(specials)
    vocab.update({f"<0x{b:02X}>": len(specials) + b for b in range(256)})
    vocab.update({tok: n_fixed + i for i, tok in enumerate(trained)})
    vocab[LLAVA_IMAGE_TOKEN] = VOCAB_SIZE - 1
    tokenizer = LlamaTokenizer(
        vocab=vocab,
        merges=merges,
        add_bos_token=True,
        add_eos_token=False,
        pad_token="<unk>",
        model_max_length=4096,
        legacy=False,
    )
    tokenizer.add_tokens([AddedToken(LLAVA_IMAGE_TOKEN, special=True, normalized=False)])
    _check_ids(tokenizer, {**specials, LLAVA_IMAGE_TOKEN: VOCAB_SIZE - 1})
    return tokenizer


def _check_ids(tokenizer: Any, expected: dict[str, int]) -> None:
    if len(tokenizer) != VOCAB_SIZE:
        raise RuntimeError(f"tokenizer has {len(tokenizer)} tokens, expected {VOCAB_SIZE}")
    for token, idx in expected.items():
        got = tokenizer.convert_tokens_to_ids(token)
        if got != idx:
            raise RuntimeError(f"{token!r} has id {got}, expected {idx}")
