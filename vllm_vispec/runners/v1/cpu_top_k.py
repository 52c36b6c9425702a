"""vLLM 0.32 on CPU: top-k sampling with speculation must not crash a step without drafts.

Without Triton, top-k goes through ``topk_topp_sampler.apply_top_k_only``, whose ``k.max()``
fails on zero rows. The rejection sampler calls it on the batch's draft rows, and a step whose
scheduled drafts are all empty (an ngram miss, a request just out of prefill, drafting off)
has none: a sampled request with ``top_k`` then stops the engine, whatever the speculative
method. Zero rows now pass through unchanged. Applied when vLLM imports the sampler module,
so ``register()`` loads nothing more.
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch


def apply(module: ModuleType) -> None:
    """Wrap ``module.apply_top_k_only`` (the PyTorch path; harmless where Triton is used)."""
    top_k_only = module.apply_top_k_only
    if hasattr(top_k_only, "__wrapped__"):
        return  # already ours

    @functools.wraps(top_k_only)
    def apply_top_k_only(logits: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        if logits.shape[0] == 0:
            return logits
        return top_k_only(logits, k)

    module.apply_top_k_only = apply_top_k_only
