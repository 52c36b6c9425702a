"""How the draft's attention leaves unseen image positions out (``vispec.draft_attention``).

* ``mark``: any vLLM attention backend, with one extra head channel (see
  :mod:`vllm_vispec.draft.attention`). Costs: the head is padded to the next size the backends
  accept, unseen slots are still read, fp8 KV caches are refused.
* ``triton`` / ``torch``: vLLM's backend only writes the KV cache; the attention itself is
  :func:`vllm_vispec.kernels.draft_paged_attention`, given each request's unseen intervals. No
  padding, and the Triton kernel never loads pages that are wholly unseen. ``triton`` is the GPU
  fast path (the default on CUDA); ``torch`` is its PyTorch reference, for checking on CPU.

Read by start-up validation in the front-end process: this module imports no model layers.
"""

from __future__ import annotations

import os

import torch
from vllm.logger import init_logger
from vllm.platforms import current_platform

from vllm_vispec.settings import setting

logger = init_logger(f"vllm.{__name__}")

DRAFT_ATTENTION_SETTING = setting("draft_attention")
# Head sizes the CPU attention backend implements; GPU backends take multiples of 8.
_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def draft_attention(head_dim: int, choice: str) -> str:
    """How the draft hides image positions here, for the requested ``choice`` (one of
    :data:`vllm_vispec.settings.DRAFT_ATTENTION_CHOICES`): ``mark``, ``triton`` or ``torch``.

    ``auto`` (the default) is ``triton`` on CUDA/ROCm, where the draft's KV cache uses vLLM's
    Triton attention backend (head sizes >= 32), and ``mark`` elsewhere. Raises ValueError for
    a choice that cannot run here.
    """
    gpu = current_platform.is_cuda_alike()
    if choice == "auto":
        return "triton" if gpu and head_dim >= 32 else "mark"
    if choice == "triton" and not gpu and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            f"{DRAFT_ATTENTION_SETTING}=triton needs a GPU; on CPU use 'torch' (the same attention "
            "in PyTorch) or 'mark', or set TRITON_INTERPRET=1 to run the kernel interpreted "
            "(slow, for tests)"
        )
    if choice != "mark" and gpu and head_dim < 32:
        raise ValueError(
            f"{DRAFT_ATTENTION_SETTING}={choice} needs head_dim >= 32 on GPUs (the draft has "
            f"{head_dim}); use 'mark'"
        )
    return choice


def checked_triton(
    num_heads: int, num_kv_heads: int, head_dim: int, block_size: int, choice: str
) -> str:
    """``triton`` if the kernel compiles and matches its reference for this draft here.

    Otherwise ``auto`` falls back to ``mark`` with a warning, and an explicit ``triton`` stops
    the start-up with the reason.
    """
    from vllm_vispec.kernels.attention.selfcheck import check_triton_attention

    try:
        dtype, device = torch.get_default_dtype(), current_platform.device_type
        check_triton_attention(num_heads, num_kv_heads, head_dim, block_size, dtype, device)
    except RuntimeError as e:
        if choice == "triton":
            raise RuntimeError(f"{e}; set {DRAFT_ATTENTION_SETTING} to 'mark'") from e
        logger.warning("ViSpec: %s; the draft hides image slots with the mark instead", e)
        return "mark"
    return "triton"


def padded_head_size(head_dim: int) -> int:
    """Smallest head size >= head_dim + 1 (the hiding channel) that attention backends run."""
    if current_platform.is_cpu():
        return next(s for s in _CPU_HEAD_SIZES if s > head_dim)
    return (head_dim + 1 + 7) // 8 * 8
