"""The target model a draft is for: its language model's config, a draft config sized for it,
its input embeddings, and whether a draft fits it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors
import torch

from vllm_vispec.checkpoint.errors import CheckpointError, reason
from vllm_vispec.checkpoint.folder import CONFIG_FILE, SAFETENSORS_FILE
from vllm_vispec.config import ViSpecConfig

if TYPE_CHECKING:
    from transformers import PretrainedConfig


def load_target_text_config(target_dir: str | Path) -> PretrainedConfig:
    """The language model's config of a target (a transformers ``PretrainedConfig``).

    Goes through transformers so that keys omitted because they equal the defaults (LLaVA-NeXT's
    ``text_config`` has no ``hidden_size``) and top-level sizes of older Qwen2.5-VL configs
    resolve the same way they do when the target is loaded.
    """
    target_dir = Path(target_dir)
    if not (target_dir / CONFIG_FILE).is_file():
        raise CheckpointError(
            f"target {target_dir} has no {CONFIG_FILE}: pass the local folder of the target "
            f"model (e.g. a downloaded Qwen/Qwen2.5-VL-7B-Instruct)"
        )
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    # Only sizes are read: transformers' warnings about unrelated fields would be noise here.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        config = AutoConfig.from_pretrained(target_dir)
    except (OSError, ValueError, KeyError, TypeError, StrictDataclassError) as e:
        raise CheckpointError(
            f"cannot read the target's {target_dir / CONFIG_FILE} ({reason(e)}); pass the "
            f"folder of a Hugging Face model"
        ) from e
    finally:
        hf_logging.set_verbosity(verbosity)
    return config.get_text_config()


def draft_config_for_target(
    target_dir: str | Path, num_q: int = 2, **overrides: Any
) -> ViSpecConfig:
    """A draft config sized for a target, following the released ViSpec configs.

    Draft heads equal the target's, with plain multi-head attention (kv heads = heads) even on a
    grouped-query target; q/k/v biases follow the target's attention (Qwen2 has them without a
    config key; Llama and Qwen3 say ``attention_bias``, false in the released models).
    """
    text = load_target_text_config(target_dir)
    rope = getattr(text, "rope_parameters", None) or {}
    fields: dict[str, Any] = {
        "hidden_size": text.hidden_size,
        "intermediate_size": text.intermediate_size,
        "num_attention_heads": text.num_attention_heads,
        "num_key_value_heads": text.num_attention_heads,
        "vocab_size": text.vocab_size,
        "rms_norm_eps": text.rms_norm_eps,
        "rope_theta": rope.get("rope_theta", getattr(text, "rope_theta", 10000.0)),
        "max_position_embeddings": text.max_position_embeddings,
        "qkv_bias": bool(getattr(text, "attention_bias", text.model_type.startswith("qwen2"))),
        "num_q": num_q,
    }
    return ViSpecConfig(**{**fields, **overrides})


def target_embeddings(target_dir: str | Path) -> torch.Tensor:
    """The language model's input embedding matrix [vocab, hidden] of a local HF target."""
    target_dir = Path(target_dir)
    with safetensors.safe_open(target_dir / SAFETENSORS_FILE, "pt") as f:
        names = [k for k in f.keys() if k.endswith("embed_tokens.weight") and "vision" not in k]
        if len(names) != 1:
            raise ValueError(f"cannot tell the text embedding of {target_dir} among {names}")
        return f.get_tensor(names[0])


def check_against_target(cfg: ViSpecConfig, target_dir: str | Path) -> None:
    """Raise unless the draft's hidden size and vocabulary fit the target's language model."""
    text = load_target_text_config(target_dir)
    for what, ours, theirs in (
        ("hidden size", cfg.hidden_size, text.hidden_size),
        ("vocab size", cfg.vocab_size, text.vocab_size),
    ):
        if ours != theirs:
            raise CheckpointError(
                f"draft {what} {ours} does not match the {what} {theirs} of target "
                f"{target_dir}: this draft was trained for another model; use the ViSpec "
                f"checkpoint released for this target"
            )
