"""Tiny ViSpec drafts with random weights, for tests and the demo (no download possible here).

They are written in the official layout, exactly as the ViSpec authors ship a checkpoint, so
that every path a real checkpoint takes (conversion included) is exercised.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import safetensors.torch
import torch

from vllm_vispec.checkpoint import (
    BIN_FILE,
    CONFIG_FILE,
    INDEX_FILE,
    SAFETENSORS_FILE,
    VISION_PREFIXES,
    draft_config_for_target,
    expected_shapes,
    load_target_text_config,
    nemo,
    official_config_dict,
    save_draft,
    save_eagle_draft,
    target_embeddings,
)
from vllm_vispec.config import ViSpecConfig

INIT_STD = 0.02


def random_tensors(
    cfg: ViSpecConfig, seed: int = 0, embed_tokens: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Seeded float32 weights in the official layout, at the scale of a freshly initialised draft.

    ``img_fc`` starts as the identity on ``h_target`` (as ViSpec initialises it) plus noise, so
    the image feature perturbs but does not drown the target's hidden state.
    """
    gen = torch.Generator().manual_seed(seed)
    h = cfg.hidden_size
    tensors = {
        name: torch.randn(shape, generator=gen) * INIT_STD
        for name, shape in expected_shapes(cfg).items()
    }
    tensors["layers.0.post_attention_layernorm.weight"] = torch.ones(h)
    for name in ("layers.0.input_layernorm.weight", "norm.weight"):  # trained norms: not 1
        if name in tensors:
            tensors[name] = 1 + torch.randn(h, generator=gen) * 0.1
    if "img_fc.weight" in tensors:
        tensors["img_fc.weight"][:, :h] += torch.eye(h)
    if embed_tokens is not None:
        want = tensors["embed_tokens.weight"].shape
        if tuple(embed_tokens.shape) != tuple(want):
            raise ValueError(
                f"embed_tokens has shape {list(embed_tokens.shape)}, the draft needs {list(want)}"
            )
        tensors["embed_tokens.weight"] = embed_tokens.detach().to("cpu", torch.float32).clone()
    return tensors


def random_official_checkpoint(
    path: str | Path,
    cfg: ViSpecConfig,
    seed: int = 0,
    fmt: Literal["safetensors", "bin"] = "safetensors",
    embed_tokens: torch.Tensor | None = None,
) -> Path:
    """Write an official-layout ViSpec checkpoint folder with random weights and return it.

    ``embed_tokens`` (the target's input embedding, [vocab, hidden]) replaces the random one, as
    in a trained draft, whose embedding is a frozen copy of the target's.
    """
    return write_official_checkpoint(path, cfg, random_tensors(cfg, seed, embed_tokens), fmt)


def write_official_checkpoint(
    path: str | Path,
    cfg: ViSpecConfig,
    tensors: dict[str, torch.Tensor],
    fmt: Literal["safetensors", "bin"] = "safetensors",
) -> Path:
    """Write ``tensors`` as an official-layout ViSpec checkpoint folder (the authors' Llama
    config.json and one weights file) and return it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_text(json.dumps(official_config_dict(cfg), indent=2) + "\n")
    if fmt == "safetensors":
        safetensors.torch.save_file(tensors, path / SAFETENSORS_FILE, metadata={"format": "pt"})
    elif fmt == "bin":
        torch.save(tensors, path / BIN_FILE)
    else:
        raise ValueError(f"fmt must be 'safetensors' or 'bin', got {fmt!r}")
    return path


def write_nemo_export(
    path: str | Path,
    target_dir: str | Path,
    cfg: ViSpecConfig,
    tensors: dict[str, torch.Tensor],
    shards: int = 2,
) -> Path:
    """Write ``tensors`` (released names) as NVIDIA NeMo Automodel's ViSpec recipe exports a
    draft: the target's text config plus the draft's fields, the adaptor named
    ``img_adaptor`` (queries ``query``), safetensors shards and their index."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = {
        **load_target_text_config(target_dir).to_dict(),
        "architectures": [nemo.ARCHITECTURE],
        "draft_num_hidden_layers": 1,
        "vispec_num_query_tokens": cfg.num_q,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "qkv_bias": cfg.qkv_bias,
        "fc_bias": cfg.fc_bias,
    }
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    renamed = {
        name.replace("imadpt.q", "img_adaptor.query").replace("imadpt.", "img_adaptor."): t
        for name, t in tensors.items()
    }
    names = sorted(renamed)
    weight_map = {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {name: renamed[name].contiguous() for name in names[i::shards]}
        safetensors.torch.save_file(part, path / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (path / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return path


def build_tiny_draft(
    target_dir: str | Path,
    dst: str | Path,
    seed: int = 0,
    num_q: int = 2,
    echo: bool = False,
    nemo_export: bool = False,
    **overrides: Any,
) -> Path:
    """A ViSpec draft for a local target, with the target's embeddings: plugin format, or with
    ``nemo_export`` as NeMo Automodel writes one (with its two norms, ``overrides`` such as
    ``head_dim`` apply to the draft's config).

    ``echo`` adds the identity to the hidden-state half of ``fc``: the draft then mostly
    returns the target's hidden state and so proposes the token the target chose last, which a
    tiny random target that loops on a token accepts. Tests use it to exercise acceptance.
    """
    if nemo_export:
        overrides = {"input_norm": True, "final_norm": True, **overrides}
    cfg = draft_config_for_target(target_dir, num_q=num_q, **overrides)
    tensors = random_tensors(cfg, seed, target_embeddings(target_dir))
    if echo:
        h = cfg.hidden_size
        tensors["fc.weight"][:, h:] += torch.eye(h)
    if nemo_export:
        return write_nemo_export(dst, target_dir, cfg, tensors)
    return save_draft(dst, cfg, tensors, {"converted_from": f"random (seed {seed})"})


def build_tiny_eagle_draft(
    target_dir: str | Path, dst: str | Path, seed: int = 0, echo: bool = False
) -> Path:
    """A same-size plain EAGLE-1 draft in vLLM's built-in format (text-only draft inputs).

    The baseline ViSpec is measured against: the ViSpec draft without ``img_fc`` and the
    adaptor, loaded by vLLM's own ``EagleLlamaForCausalLM``.
    """
    cfg = draft_config_for_target(target_dir, fc_bias=False)
    tensors = {
        name: value
        for name, value in random_tensors(cfg, seed, target_embeddings(target_dir)).items()
        if not name.startswith(VISION_PREFIXES)
    }
    if echo:
        h = cfg.hidden_size
        tensors["fc.weight"][:, h:] += torch.eye(h)
    return save_eagle_draft(dst, cfg, tensors)
