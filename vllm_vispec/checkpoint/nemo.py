"""ViSpec drafts exported by NVIDIA NeMo Automodel's ViSpec recipe (``VispecDraftModel``).

Their ``config.json`` is the target's text config plus the draft's fields
(``draft_num_hidden_layers``, ``vispec_num_query_tokens``, ``qkv_bias``, ``fc_bias``), so the
attention keeps the target's ``head_dim``; the weights are sharded safetensors with an index.
Tensor names follow the released layout except the adaptor (``img_adaptor``, queries
``query``), and the draft adds two trained RMSNorms: ``layers.0.input_layernorm`` before
attention and ``norm`` on the output (which EAGLE feeds back and the lm_head reads). Image
layout, adaptor and ``img_fc`` are ViSpec's, so the plugin runs them as its own draft with
``input_norm`` and ``final_norm`` set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vllm_vispec.checkpoint.errors import CheckpointError

ARCHITECTURE = "VispecDraftModel"
QUERY_NAMES = frozenset({"img_adaptor.query", "model.img_adaptor.query"})
_RENAMES = (("img_adaptor.query", "imadpt.q"), ("img_adaptor.", "imadpt."))


def is_nemo(config: dict[str, Any]) -> bool:
    return config.get("architectures") == [ARCHITECTURE]


def official_config(config: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The export's config in the keys of a released draft's config."""
    layers = int(config.get("draft_num_hidden_layers", 1))
    if layers != 1:
        raise CheckpointError(
            f"{folder} is a NeMo Automodel ViSpec draft with {layers} decoder layers; the plugin "
            f"runs one-layer drafts: train it with draft_num_hidden_layers: 1"
        )
    for key, what in (("attention_bias", "an o_proj bias"), ("mlp_bias", "MLP biases")):
        if config.get(key):
            raise CheckpointError(
                f"{folder} is a NeMo Automodel ViSpec draft with {what} ({key}: true), which "
                f"ViSpec drafts do not have; train it with {key}: false"
            )
    return {
        **config,
        "num_hidden_layers": 1,
        "bias": bool(config.get("fc_bias", False)),
        "qkv_bias": bool(config.get("qkv_bias", False)),
        "vispec": {"input_norm": True, "final_norm": True},
    }


def official_names(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The export's tensors under the released names (a ``model.`` prefix, as some exporters
    write it, is dropped)."""
    if tensors and all(name.startswith("model.") for name in tensors):
        tensors = {name.removeprefix("model."): t for name, t in tensors.items()}
    renamed = {}
    for name, tensor in tensors.items():
        for old, new in _RENAMES:
            if name.startswith(old):
                name = new + name.removeprefix(old)
                break
        renamed[name] = tensor
    return renamed


def num_q(config: dict[str, Any]) -> int | None:
    value = config.get("vispec_num_query_tokens")
    return None if value is None else int(value)
