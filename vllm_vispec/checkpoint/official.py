"""Official ViSpec checkpoints as their authors release them: reading one, recording where it
came from, and writing its Llama-style ``config.json``.

An official draft is a Llama-style ``config.json`` plus ``model.safetensors`` or
``pytorch_model.bin``; ``num_q`` is only the first dimension of ``imadpt.q``. NVIDIA NeMo
Automodel exports are read through :mod:`~vllm_vispec.checkpoint.nemo` into the same layout.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from vllm_vispec.checkpoint import nemo
from vllm_vispec.checkpoint.errors import CheckpointError
from vllm_vispec.checkpoint.folder import (
    CONFIG_FILE,
    INDEX_FILE,
    config_from_dict,
    find_weights,
    read_config,
)
from vllm_vispec.checkpoint.tensors import read_tensors, validate_tensors, what_it_is
from vllm_vispec.config import ViSpecConfig, is_plugin_config

REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")  # a hub id, as "JLKang/ViSpec-Qwen2.5-VL-7B-Instruct"
_HF_CACHE_SNAPSHOT = re.compile(r"models--([^/]+)--([^/]+)/snapshots/[^/]+$")


def load_official(src: str | Path) -> tuple[ViSpecConfig, dict[str, torch.Tensor]]:
    """Read and fully validate an official ViSpec checkpoint folder."""
    src = Path(src)
    d = read_config(src, role="SRC")
    if is_plugin_config(d):
        raise CheckpointError(
            f"{src} is already in vllm-vispec format; pass it to vLLM as it is, no conversion "
            f"needed"
        )
    files = find_weights(src)
    file = files[0].parent / INDEX_FILE if len(files) > 1 else files[0]
    tensors = read_tensors(files)
    if nemo.is_nemo(d):
        d, tensors = nemo.official_config(d, src), nemo.official_names(tensors)
    if "imadpt.q" not in tensors:
        raise CheckpointError(
            f"{file} is not a ViSpec checkpoint: {what_it_is(tensors)}; use a ViSpec draft "
            f"trained for your target (e.g. JLKang/ViSpec-Qwen2.5-VL-7B-Instruct)"
        )
    q = tensors["imadpt.q"]
    if q.dim() != 3:
        raise CheckpointError(
            f"{file}: imadpt.q has shape {list(q.shape)}, expected [num_q, heads, head_dim]; "
            f"download the checkpoint again"
        )
    cfg = config_from_dict(d, src, num_q=q.shape[0])
    if d.get("vispec_num_query_tokens", cfg.num_q) != cfg.num_q:
        raise CheckpointError(
            f"{src / CONFIG_FILE} says vispec_num_query_tokens "
            f"{d['vispec_num_query_tokens']} but {file} has {cfg.num_q} adaptor queries; "
            f"download the checkpoint again"
        )
    validate_tensors(cfg, tensors, str(file))
    return cfg, tensors


def provenance(src: Path) -> dict[str, str]:
    """Where a converted draft came from, recorded in its config.json."""
    from vllm_vispec import __version__

    src = src.resolve()
    found = _HF_CACHE_SNAPSHOT.search(src.as_posix())
    return {
        # The hub repo id for a folder in the hub cache, else the absolute path.
        "converted_from": f"{found[1]}/{found[2]}" if found else str(src),
        "source_file": _source_file(find_weights(src)),
        "converter_version": __version__,
    }


def _source_file(files: list[Path]) -> str:
    return INDEX_FILE if len(files) > 1 else files[0].name


def official_config_dict(cfg: ViSpecConfig) -> dict[str, Any]:
    """The Llama-style ``config.json`` of a released ViSpec draft: no ``num_q``, no vispec block."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "num_hidden_layers": 1,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "max_position_embeddings": cfg.max_position_embeddings,
        "vocab_size": cfg.vocab_size,
        "qkv_bias": cfg.qkv_bias,
        "pretraining_tp": 1,
        "bias": cfg.fc_bias,
        "torch_dtype": "float32",
    }
