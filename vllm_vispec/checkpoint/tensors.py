"""The tensors of a ViSpec draft: the names and shapes a config implies, checking a state dict
against them, reading weights files, and telling from tensor names what a state dict is."""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from vllm_vispec.checkpoint import nemo
from vllm_vispec.checkpoint.errors import CheckpointError, few, reason
from vllm_vispec.checkpoint.folder import find_weights
from vllm_vispec.config import ViSpecConfig

# Old EAGLE code saved RoPE's inverse frequencies as a persistent buffer; they are a function of
# rope_theta, so they are dropped instead of being reported as unexpected.
_DERIVED_SUFFIXES = ("rotary_emb.inv_freq",)
# What reading a corrupt, truncated or foreign weights file raises.
READ_ERRORS = (
    safetensors.SafetensorError,
    OSError,
    RuntimeError,
    ValueError,
    EOFError,
    pickle.UnpicklingError,
)


def expected_shapes(cfg: ViSpecConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of an official ViSpec draft with this config."""
    h, i, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    nh, hd = cfg.num_attention_heads, cfg.head_dim
    q, kv = nh * hd, cfg.num_key_value_heads * hd
    attn = "layers.0.self_attn."
    shapes: dict[str, tuple[int, ...]] = {
        "embed_tokens.weight": (v, h),
        attn + "q_proj.weight": (q, h),
        attn + "k_proj.weight": (kv, h),
        attn + "v_proj.weight": (kv, h),
        attn + "o_proj.weight": (h, q),
        "layers.0.mlp.gate_proj.weight": (i, h),
        "layers.0.mlp.up_proj.weight": (i, h),
        "layers.0.mlp.down_proj.weight": (h, i),
        "layers.0.post_attention_layernorm.weight": (h,),
        "fc.weight": (h, 2 * h),
    }
    if cfg.has_adaptor:
        shapes.update(
            {"img_fc.weight": (h, 2 * h), "imadpt.q": (cfg.num_q, nh, cfg.adaptor_head_dim)}
        )
        shapes.update({f"imadpt.{p}_proj.weight": (h, h) for p in "kvo"})
    if cfg.input_norm:
        shapes["layers.0.input_layernorm.weight"] = (h,)
    if cfg.final_norm:
        shapes["norm.weight"] = (h,)
    if cfg.qkv_bias:
        shapes.update({attn + "q_proj.bias": (q,), attn + "k_proj.bias": (kv,)})
        shapes.update({attn + "v_proj.bias": (kv,)})
    if cfg.fc_bias:
        shapes["fc.bias"] = (h,)
    if cfg.has_adaptor and cfg.qkv_bias:
        shapes.update({"imadpt.k_proj.bias": (h,), "imadpt.v_proj.bias": (h,)})
    if cfg.has_adaptor and cfg.fc_bias:
        shapes["img_fc.bias"] = (h,)
    return {**shapes, **_compressor_shapes(cfg)}


def _compressor_shapes(cfg: ViSpecConfig) -> dict[str, tuple[int, ...]]:
    """SpecVLM's compressor: what its possible choices need."""
    h, choices, shapes = cfg.hidden_size, cfg.compressor_choices, {}
    if "conv" in choices:  # a Conv1d over the image rows, kernel and stride = compression
        shapes["compressor.conv.weight"] = (h, h, cfg.compression)
        shapes["compressor.conv.bias"] = (h,)
    if "resampler" in choices:  # learned queries, laid out as ViSpec's adaptor
        nh = cfg.num_attention_heads
        shapes["compressor.resampler.q"] = (cfg.resampler_queries, nh, cfg.adaptor_head_dim)
        shapes.update({f"compressor.resampler.{p}_proj.weight": (h, h) for p in "kvo"})
        if cfg.qkv_bias:
            shapes.update({f"compressor.resampler.{p}_proj.bias": (h,) for p in "kv"})
    if len(choices) > 1:  # over cat(mean image embedding, mean text embedding before it)
        shapes["compressor.gate.weight"] = (len(choices), 2 * h)
        shapes["compressor.gate.bias"] = (len(choices),)
    return shapes


def validate_tensors(cfg: ViSpecConfig, tensors: Mapping[str, torch.Tensor], origin: str) -> None:
    """Raise unless ``tensors`` has exactly the names and shapes ``cfg`` implies."""
    expected = expected_shapes(cfg)
    missing = [name for name in expected if name not in tensors]
    if missing:
        raise CheckpointError(
            f"{origin}: {len(missing)} of the {len(expected)} tensors of a ViSpec draft are "
            f"missing ({few(missing)}): the file is incomplete or config.json does not match it "
            f"({_flags(cfg)}); download or convert it again"
        )
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise CheckpointError(
            f"{origin}: {_count(unexpected, 'unexpected tensor')} ({few(unexpected)}) for "
            f"the ViSpec layout that config.json describes ({_flags(cfg)}); check that "
            f"config.json belongs to these weights"
        )
    wrong = [n for n, shape in expected.items() if tuple(tensors[n].shape) != shape]
    if wrong:
        name = wrong[0]
        others = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise CheckpointError(
            f"{origin}: {name} has shape {list(tensors[name].shape)}, expected "
            f"{list(expected[name])}{others} from config.json ({_sizes(cfg)}); check that "
            f"config.json belongs to these weights"
        )


def read_tensors(files: Iterable[Path]) -> dict[str, torch.Tensor]:
    """Load safetensors or ``.bin`` state dicts (shards merged) onto the CPU without running
    pickled code."""
    tensors: dict[str, Any] = {}
    for file in files:
        try:
            if file.suffix == ".safetensors":
                part = safetensors.torch.load_file(file)
            else:
                part = torch.load(file, map_location="cpu", weights_only=True)
        except READ_ERRORS as e:
            raise CheckpointError(
                f"cannot read {file} ({reason(e)}): the file is corrupt or truncated; download "
                f"it again"
            ) from e
        if not isinstance(part, dict) or not all(
            isinstance(t, torch.Tensor) for t in part.values()
        ):
            raise CheckpointError(
                f"{file} is not a flat state dict of tensors (a training checkpoint?); "
                f"save the draft's state_dict() alone"
            )
        tensors.update(part)
    return {k: v for k, v in tensors.items() if not k.endswith(_DERIVED_SUFFIXES)}


def tensor_names(folder: Path) -> set[str]:
    """Names in a folder's weights files without reading the data; empty if there are none."""
    names: set[str] = set()
    try:
        for file in find_weights(folder):
            if file.suffix == ".safetensors":
                with safetensors.safe_open(file, "pt") as f:
                    names.update(f.keys())
            else:
                names.update(torch.load(file, map_location="cpu", weights_only=True, mmap=True))
    except (CheckpointError, *READ_ERRORS):
        return set()
    return names


def has_adaptor(names: set[str]) -> bool:
    """True for the tensor names of a ViSpec draft (released or NeMo layout)."""
    return "imadpt.q" in names or bool(names & nemo.QUERY_NAMES)


def what_it_is(names: Iterable[str]) -> str:
    """A guess at what a non-ViSpec state dict is, for error messages."""
    names = set(names)
    if any(n.startswith("midlayer.") for n in names):
        return "it looks like an EAGLE-3 draft (midlayer.*)"
    if any(n.startswith(("model.layers.", "language_model.")) for n in names):
        return "it looks like a full model (model.layers.*), not a draft"
    if any(n.startswith("fc.") for n in names):
        return "it looks like a plain EAGLE draft (no imadpt.* vision adaptor tensors)"
    return "it has no imadpt.* vision adaptor tensors"


def _count(items: list[str], noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _flags(cfg: ViSpecConfig) -> str:
    norms = (
        f", input_norm={cfg.input_norm}, final_norm={cfg.final_norm}"
        if (cfg.input_norm or cfg.final_norm)
        else ""
    )
    return f"qkv_bias={cfg.qkv_bias}, bias={cfg.fc_bias}{norms}"


def _sizes(cfg: ViSpecConfig) -> str:
    return (
        f"hidden_size={cfg.hidden_size}, intermediate_size={cfg.intermediate_size}, "
        f"heads={cfg.num_attention_heads}, kv_heads={cfg.num_key_value_heads}, "
        f"head_dim={cfg.head_dim}, "
        f"vocab_size={cfg.vocab_size}, num_q={cfg.num_q}"
    )
