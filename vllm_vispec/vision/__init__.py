"""What the draft sees of images: one :class:`~vllm_vispec.vision.strategy.ImageStrategy` per
draft kind (ViSpec, EagleVLM, SpecVLM), chosen once from the draft's config."""

from __future__ import annotations

from typing import Any

import torch

from vllm_vispec.feature_cache import FeatureCache
from vllm_vispec.vision.image_tokens import EagleVLMImages, SpecVLMImages
from vllm_vispec.vision.strategy import ImageStrategy
from vllm_vispec.vision.vispec import ViSpecImages

__all__ = ["ImageStrategy", "image_strategy"]


def image_strategy(
    draft: Any, features: FeatureCache, dtype: torch.dtype, device: torch.device
) -> ImageStrategy:
    """The strategy of ``draft`` (an ``EagleViSpecForCausalLM``), by its config's kind."""
    cfg = draft.vispec_config
    common = {
        "hidden_size": cfg.hidden_size,
        "dtype": dtype,
        "device": device,
        "features": features,
        "by_intervals": draft.attends_by_intervals,
    }
    if cfg.kind == "vispec":
        return ViSpecImages(cfg.num_q, draft.adapt_images, **common)
    if cfg.kind == "eaglevlm":
        return EagleVLMImages(**common)
    return SpecVLMImages(
        draft.compress_images,
        cfg.compressor_choices,
        cfg.compression,
        cfg.resampler_queries,
        **common,
    )
