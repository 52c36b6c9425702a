"""Tiny random vision-language targets, built locally from configs (no model hub).

Tests, the demo and the benchmarks need real VLM checkpoints that both HF transformers and vLLM
load, but these machines have no internet and two CPU cores. The builders here write complete HF
folders (config, float32 safetensors weights, tokenizer and chat template from
:mod:`vllm_vispec.tools.testing.tiny_tokenizers`, image processor, processor) for the architectures
ViSpec is tested on: Qwen2.5-VL, Qwen3-VL, Qwen3-VL-MoE, LLaVA-NeXT and LLaVA-1.5. Text models use
head_dim 32 (the CPU attention backend needs multiples of 32), so vLLM and transformers agree
token for token under greedy decoding. Builds are deterministic: the same seed gives
byte-identical files. :func:`make_test_image` draws deterministic synthetic pictures for them.
"""

from __future__ import annotations

import json
import pathlib
import random
from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw

from vllm_vispec.tools.testing.tiny_tokenizers import (
    LLAVA_CHAT_TEMPLATE,
    LLAVA_IMAGE_TOKEN,
    QWEN_CHAT_TEMPLATE,
    QWEN_SPECIAL_TOKENS,
    VOCAB_SIZE,
    llama_tokenizer,
    qwen_tokenizer,
)

__all__ = [
    "build_tiny_llava",
    "build_tiny_llava_next",
    "build_tiny_qwen2_5_vl",
    "build_tiny_qwen3_vl",
    "build_tiny_qwen3_vl_moe",
    "finish",
    "make_test_image",
    "save_model",
]

INIT_STD = 0.1
"""Weight init std. HF's default 0.02 leaves a 2-layer random model almost a bigram table: greedy
output falls into 2-token loops. 0.1 gives varied, image-dependent output with larger top-1/top-2
logit margins (measured min 1e-3..3e-3 over 96 greedy steps, vs 3e-4), so float32 vLLM and HF
agree token for token."""

# --------------------------------------------------------------------------------------------
# Weights and folders


def save_model(
    model_cls: Any,
    config: Any,
    path: pathlib.Path,
    seed: int,
    never_generated: list[int],
    renames: tuple = (),
    transposed: tuple[str, ...] = (),
) -> None:
    """Initialise with HF's own init under a private RNG and save float32 safetensors.

    ``never_generated`` token ids (image/video placeholders, ...) get an all-zero ``lm_head`` row:
    their logit is then exactly 0 while the greedy winner among hundreds of random logits is always
    clearly positive, so, like a real VLM, the model never emits a placeholder greedily (a
    generated ``<image>`` would look like an image span to anything that scans token ids).

    ``renames`` are (old prefix, new prefix) pairs applied to the saved tensor names: transformers
    5 writes some checkpoints in a layout that only transformers 5 reads back (see
    :func:`build_tiny_llava_next`), while vLLM expects the published checkpoints' names.
    ``transposed`` tensors (by name suffix) are saved with their last two dims swapped, for the
    same reason (see :func:`build_tiny_qwen3_vl_moe`).
    """
    import torch
    from safetensors.torch import load_file, save_file

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config).to(torch.float32).eval()
    with torch.no_grad():
        model.lm_head.weight[never_generated] = 0.0
    model.save_pretrained(path)
    if renames or transposed:
        file = path / "model.safetensors"
        tensors = load_file(file)
        rewritten = {}
        for name, tensor in tensors.items():
            for old, new in renames:
                if name.startswith(old) and not name.startswith(new):
                    name = new + name[len(old) :]
            if name.endswith(transposed):
                tensor = tensor.transpose(-1, -2).contiguous()
            rewritten[name] = tensor
        save_file(dict(sorted(rewritten.items())), file, metadata={"format": "pt"})


def finish(path: pathlib.Path) -> pathlib.Path:
    """Drop non-deterministic metadata so rebuilds are byte-identical."""
    for name in ("config.json", "generation_config.json"):
        file = path / name
        if file.exists():
            data = json.loads(file.read_text())
            data.pop("transformers_version", None)
            file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def _mrope_section(head_dim: int) -> list[int]:
    """Temporal/height/width split of head_dim / 2 in Qwen2.5-VL's proportions (16/24/24)."""
    t = head_dim // 8
    return [t, (head_dim // 2 - t) // 2, head_dim // 2 - t - (head_dim // 2 - t) // 2]


def _mrope_section_interleaved(head_dim: int) -> list[int]:
    """T/H/W split of head_dim / 2 in Qwen3-VL's proportions (24/20/20), for interleaved M-RoPE."""
    hw = head_dim * 5 // 32
    return [head_dim // 2 - 2 * hw, hw, hw]


def _qwen_ids(tokenizer: Any) -> dict[str, int]:
    return {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}


def _qwen_text_config(
    ids: dict[str, int],
    hidden_size: int,
    num_heads: int,
    num_layers: int,
    init_std: float,
    rope_parameters: dict,
    **extra: Any,
) -> dict[str, Any]:
    """Text config keys shared by the Qwen-VL targets (GQA with half the heads as KV heads)."""
    return {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_heads // 2,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "initializer_range": init_std,
        "rope_parameters": rope_parameters,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "tie_word_embeddings": False,
        **extra,
        "dtype": "float32",
    }


def _qwen_vision_token_ids(ids: dict[str, int]) -> dict[str, int]:
    """Top-level Qwen-VL config keys naming the vision special tokens."""
    return {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }


def _save_qwen_model(
    model_cls: Any,
    config: Any,
    path: pathlib.Path,
    seed: int,
    ids: dict[str, int],
    transposed: tuple[str, ...] = (),
) -> None:
    """Weights (vision/pad tokens never generated) and the greedy generation config."""
    from transformers import GenerationConfig

    config.architectures = [model_cls.__name__]
    vision_tokens = [ids[t] for t in QWEN_SPECIAL_TOKENS if "vision" in t or "pad" in t]
    save_model(model_cls, config, path, seed, vision_tokens, transposed=transposed)
    GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=False,
    ).save_pretrained(path)


def _save_qwen_processor(
    path: pathlib.Path,
    tokenizer: Any,
    processor_cls: Any,
    image_processor_cls: Any,
    video_processor_cls: Any,
    **vision: Any,
) -> None:
    """Image/video processors (at most 448x448 pixels, ``vision`` = patch/merge/normalisation
    settings), the tokenizer and the Qwen chat template, saved as one processor."""
    pixels = {"shortest_edge": 56 * 56, "longest_edge": 448 * 448}
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    processor = processor_cls(
        image_processor=image_processor_cls(size=pixels, **vision),
        tokenizer=tokenizer,
        video_processor=video_processor_cls(size=pixels, **vision),
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    processor.save_pretrained(path)


def build_tiny_qwen2_5_vl(
    path: str | pathlib.Path,
    seed: int = 0,
    hidden_size: int = 128,
    num_heads: int = 4,
    num_layers: int = 2,
    extra_corpus: Sequence[str] = (),
    init_std: float = INIT_STD,
) -> pathlib.Path:
    """Write a tiny random Qwen2.5-VL HF folder at ``path`` and return it.

    ``hidden_size`` / ``num_heads`` / ``num_layers`` size the text model for benchmarks and the
    toy world (head_dim must be a multiple of 32 for vLLM's CPU attention); ``extra_corpus``
    lines join the tokenizer's training text (the toy world's descriptions, so they tokenize
    compactly) and ``init_std`` suits a model that will be trained. The defaults are the tests'.

    Text: hidden 128, 2 layers, 4 heads (head_dim 32), 2 KV heads, vocab 512, M-RoPE sections
    [4, 6, 6] (summing to head_dim / 2 as in the real model). Vision: depth 2, hidden 64, 2 heads,
    patch 14, merge 2, one window-attention and one full-attention block, out_hidden 128, so a
    224x224 image gives a 16x16 patch grid -> 64 image tokens. Images are resized to at most
    448x448 pixels (256 tokens) to keep vLLM's encoder profiling cheap.
    """
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = qwen_tokenizer(extra_corpus)
    ids = _qwen_ids(tokenizer)

    config = Qwen2_5_VLConfig(
        text_config=_qwen_text_config(
            ids,
            hidden_size,
            num_heads,
            num_layers,
            init_std,
            {
                "rope_type": "default",
                "rope_theta": 1000000.0,
                "mrope_section": _mrope_section(hidden_size // num_heads),
            },
            use_sliding_window=False,
            sliding_window=None,
            max_window_layers=num_layers,
        ),
        vision_config={
            "depth": 2,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 2,
            "hidden_act": "silu",
            "in_channels": 3,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [1],
            "out_hidden_size": hidden_size,
            "tokens_per_second": 2,
            "initializer_range": init_std,
        },
        **_qwen_vision_token_ids(ids),
        tie_word_embeddings=False,
    )
    _save_qwen_model(Qwen2_5_VLForConditionalGeneration, config, path, seed, ids)
    _save_qwen_processor(
        path,
        tokenizer,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
    )
    return finish(path)


def build_tiny_qwen3_vl(path: str | pathlib.Path, seed: int = 0) -> pathlib.Path:
    """Write a tiny random Qwen3-VL HF folder at ``path`` and return it.

    The tokenizer and chat template of :func:`build_tiny_qwen2_5_vl`. Text: hidden 128,
    2 layers, 4 heads (head_dim 32), 2 KV heads, vocab 512, interleaved M-RoPE with sections
    [6, 5, 5] (Qwen3-VL's 24/20/20 scaled to head_dim / 2). Vision: depth 2, hidden 64, 2 heads,
    patch 16, merge 2, 8x8 learned position embeddings (bilinearly interpolated to the patch
    grid), out_hidden 128, one DeepStack level (block 0's features, merged, are added to the
    hidden states after text layer 0). A 224x224 image gives a 14x14 patch grid -> 49 image
    tokens; images are resized to at most 448x448 pixels (196 tokens).
    """
    return _build_tiny_qwen3_vl(path, seed, moe=False)


def build_tiny_qwen3_vl_moe(path: str | pathlib.Path, seed: int = 0) -> pathlib.Path:
    """Write a tiny random Qwen3-VL-MoE HF folder at ``path`` and return it.

    :func:`build_tiny_qwen3_vl` (same tokenizer, vision tower, attention and M-RoPE) with a
    sparse MoE block in every text layer (decoder_sparse_step 1): 4 experts, top-2 routing with
    renormalised weights, moe_intermediate_size 32.

    The fused expert tensors are saved in the published checkpoints' layout,
    ``experts.gate_up_proj`` [E, H, 2I] and ``experts.down_proj`` [E, I, H]: vLLM's loader
    transposes every fused expert tensor of this architecture (``is_fused_checkpoint_transposed``)
    into its [E, 2I, H] / [E, H, I]. transformers 5 holds and saves them as [E, 2I, H] /
    [E, H, I], which vLLM refuses (``_load_w2``: shape mismatch); on load it transposes a tensor
    whose shape differs from its own. moe_intermediate_size is chosen so that neither tensor is
    square (2I != H, I != H): a square one would be ambiguous to that check.
    """
    return _build_tiny_qwen3_vl(path, seed, moe=True)


def _build_tiny_qwen3_vl(path: str | pathlib.Path, seed: int, moe: bool) -> pathlib.Path:
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLMoeConfig,
        Qwen3VLMoeForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    hidden_size, num_heads, head_dim = 128, 4, 32
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = qwen_tokenizer()
    ids = _qwen_ids(tokenizer)

    if moe:
        config_cls, model_cls = Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration
        experts = {
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
            # transformers always renormalises the top-k weights; vLLM reads this key.
            "norm_topk_prob": True,
        }
        transposed = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")
    else:
        config_cls, model_cls = Qwen3VLConfig, Qwen3VLForConditionalGeneration
        experts, transposed = {}, ()
    config = config_cls(
        text_config=_qwen_text_config(
            ids,
            hidden_size,
            num_heads,
            2,
            INIT_STD,
            {
                "rope_type": "default",
                "rope_theta": 5000000.0,
                "mrope_section": _mrope_section_interleaved(head_dim),
                "mrope_interleaved": True,
            },
            head_dim=head_dim,
            attention_bias=False,
            **experts,
        ),
        vision_config={
            "depth": 2,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 2,
            "hidden_act": "gelu_pytorch_tanh",
            "in_channels": 3,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": hidden_size,
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [0],
            "initializer_range": INIT_STD,
        },
        **_qwen_vision_token_ids(ids),
        tie_word_embeddings=False,
    )
    _save_qwen_model(model_cls, config, path, seed, ids, transposed)
    _save_qwen_processor(
        path,
        tokenizer,
        Qwen3VLProcessor,
        Qwen2VLImageProcessor,
        Qwen3VLVideoProcessor,
        patch_size=16,
        temporal_patch_size=2,
        merge_size=2,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return finish(path)


def build_tiny_llava_next(path: str | pathlib.Path, seed: int = 0) -> pathlib.Path:
    """Write a tiny random LLaVA-1.6 (LLaVA-NeXT) HF folder at ``path`` and return it.

    Text: Llama, hidden 128, 2 layers, 4 heads (head_dim 32), 2 KV heads, vocab 512 with
    ``<image>`` = 511. Vision: CLIP ViT, image 56, patch 14 (4x4 patches + CLS), hidden 64,
    2 heads, 2 layers; feature layer -2, CLS dropped ("default" strategy). AnyRes grid pinpoints
    are multiples of 56 up to 112x112, so a 224x224 image -> 2x2 tiles -> 8x8 unpadded features
    + 8 newline tokens + 16 base tokens = 88 image tokens.
    """
    return _build_tiny_llava(path, seed, anyres=True)


def build_tiny_llava(path: str | pathlib.Path, seed: int = 0) -> pathlib.Path:
    """Write a tiny random LLaVA-1.5 HF folder at ``path`` and return it.

    The text model and CLIP tower of :func:`build_tiny_llava_next`, without AnyRes: every image
    is resized and centre-cropped to 56x56, 4x4 patches, 16 image tokens (LLaVA-1.5-7B: 336
    pixels, 24x24 patches, 576 tokens).
    """
    return _build_tiny_llava(path, seed, anyres=False)


def _build_tiny_llava(path: str | pathlib.Path, seed: int, anyres: bool) -> pathlib.Path:
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        GenerationConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
        LlavaProcessor,
    )

    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = llama_tokenizer()
    image_size, patch_size = 56, 14
    pinpoints = [[56, 112], [112, 56], [112, 112], [56, 168], [168, 56]]

    text_config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        hidden_act="silu",
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        initializer_range=INIT_STD,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    vision_config = CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=64,
        hidden_act="quick_gelu",
        initializer_range=INIT_STD,
    )
    common = {
        "vision_config": vision_config,
        "text_config": text_config,
        "image_token_index": VOCAB_SIZE - 1,
        "projector_hidden_act": "gelu",
        "vision_feature_select_strategy": "default",
        "vision_feature_layer": -2,
        "tie_word_embeddings": False,
        "image_seq_length": (image_size // patch_size) ** 2,
    }
    if anyres:
        model_class = LlavaNextForConditionalGeneration
        config = LlavaNextConfig(**common, image_grid_pinpoints=pinpoints)
    else:
        model_class = LlavaForConditionalGeneration
        config = LlavaConfig(**common)
    config.architectures = [model_class.__name__]
    config.dtype = "float32"
    # transformers 5 drops CLIP's ``vision_model.`` level on save; published llava-hf checkpoints
    # (and vLLM's loader) have ``vision_tower.vision_model.*``, which transformers 5 also reads.
    save_model(
        model_class,
        config,
        path,
        seed,
        # <unk>, <s>, <image> and the non-ASCII byte-fallback pieces (lone ones are invalid
        # UTF-8: vLLM's incremental detokenizer would log a warning per request).
        [0, 1, config.image_token_index, *range(3 + 0x80, 3 + 0x100)],
        renames=(("vision_tower.", "vision_tower.vision_model."),),
    )
    generation = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0, do_sample=False)
    generation.save_pretrained(path)

    image_options = {
        "size": {"shortest_edge": image_size},
        "crop_size": {"height": image_size, "width": image_size},
        "do_center_crop": True,
    }
    tokenizer.chat_template = LLAVA_CHAT_TEMPLATE
    processor_options = {
        "tokenizer": tokenizer,
        "patch_size": patch_size,
        "vision_feature_select_strategy": "default",
        "image_token": LLAVA_IMAGE_TOKEN,
        "num_additional_image_tokens": 1,
        "chat_template": LLAVA_CHAT_TEMPLATE,
    }
    if anyres:
        image_processor = LlavaNextImageProcessor(
            **image_options, image_grid_pinpoints=pinpoints, do_pad=True
        )
        processor = LlavaNextProcessor(image_processor=image_processor, **processor_options)
    else:
        image_processor = CLIPImageProcessor(**image_options)
        processor = LlavaProcessor(image_processor=image_processor, **processor_options)
    processor.save_pretrained(path)
    return finish(path)


# --------------------------------------------------------------------------------------------
# Images


def make_test_image(seed: int, size: tuple[int, int] = (224, 224)) -> Image.Image:
    """A deterministic synthetic RGB picture: a tinted background with a few random shapes.

    Different seeds give visibly different images, so tests can check that outputs depend on
    the picture and that image caches key on content.
    """
    rng = random.Random(seed)
    width, height = size
    background = tuple(rng.randrange(256) for _ in range(3))
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(3, 7)):
        colour = tuple(rng.randrange(256) for _ in range(3))
        x0, x1 = sorted(rng.randrange(width) for _ in range(2))
        y0, y1 = sorted(rng.randrange(height) for _ in range(2))
        box = (x0, y0, max(x1, x0 + 4), max(y1, y0 + 4))
        kind = rng.choice(("rectangle", "ellipse", "line"))
        if kind == "rectangle":
            draw.rectangle(box, fill=colour)
        elif kind == "ellipse":
            draw.ellipse(box, fill=colour)
        else:
            draw.line(box, fill=colour, width=rng.randint(1, 6))
    return image
