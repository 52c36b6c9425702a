"""Route ViSpec configs to vLLM's V1 model runner, where the proposer lives.

Adds ViSpec to ``VllmConfig._get_v2_model_runner_unsupported_features``; vLLM then picks V1
and logs its usual one line ("Model Runner V2 does not yet support ...").
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from vllm_vispec.validation import is_vispec_draft


def apply(module: ModuleType) -> None:
    vllm_config = module.VllmConfig
    unsupported = vllm_config._get_v2_model_runner_unsupported_features

    def _get_v2_model_runner_unsupported_features(self: Any) -> list[str]:
        features = unsupported(self)
        if is_vispec_draft(self.speculative_config):
            features.append("ViSpec drafts (vllm-vispec)")
        return features

    vllm_config._get_v2_model_runner_unsupported_features = (
        _get_v2_model_runner_unsupported_features
    )
