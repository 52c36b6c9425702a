"""The ViSpec draft as V2 registers it: the shared draft model, declaring its speculator."""

from __future__ import annotations

from vllm_vispec.draft import model
from vllm_vispec.runners.v2.config import ViSpecSpeculatorConfig


class EagleViSpecForCausalLM(model.EagleViSpecForCausalLM):
    """Same model; vLLM's registry reads ``speculator_config_class`` from the class."""

    speculator_config_class = ViSpecSpeculatorConfig
