"""The ViSpec speculator's entry in vLLM's speculator configs (V2).

vLLM reads this through the draft model's ``speculator_config_class``: a ViSpec draft with
``"method": "eagle"`` behaves as EAGLE everywhere outside the runner (lookahead slots, hidden
states from the target) and builds :class:`~vllm_vispec.runners.v2.speculator.ViSpecSpeculator`.
Like vLLM's config modules, this one imports no speculator.
"""

from __future__ import annotations

from vllm.v1.worker.gpu.spec_decode.eagle.config import EagleSpeculatorConfig


class ViSpecSpeculatorConfig(EagleSpeculatorConfig):
    speculator_class = "vllm_vispec.runners.v2.speculator.ViSpecSpeculator"
    supports_watermarking = False  # untested with ViSpec drafts
