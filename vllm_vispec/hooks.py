"""Where the plugin attaches to vLLM 0.32; everything here is a no-op for non-ViSpec configs.

* ``EngineArgs.create_engine_config``: start-up validation of ViSpec speculative configs, in
  the front-end process, before any worker starts (``LLM(...)`` and ``vllm serve`` alike).
* ``VllmConfig._get_v2_model_runner_unsupported_features``: ViSpec needs the V1 runner; vLLM
  then logs its usual one line ("Model Runner V2 does not yet support ...").
* ``EagleProposer.__new__``: builds a :class:`~vllm_vispec.proposer.ViSpecProposer` when the
  draft is a ViSpec draft. Being a subclass, it passes every ``isinstance(drafter,
  EagleProposer)`` check in the runners.

Modules not yet imported are patched right after their first import (an import hook), so a
process that never drafts never pays for importing the EAGLE code.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable
from typing import Any

from vllm_vispec.validation import is_vispec_draft, precheck, validate


def install() -> None:
    for name, patch in _PATCHES.items():
        if name in sys.modules:
            patch(sys.modules[name])
        else:
            sys.meta_path.insert(0, _PatchOnImport(name, patch))


def _patch_config(module: Any) -> None:
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


def _patch_engine_args(module: Any) -> None:
    create = module.EngineArgs.create_engine_config

    def create_engine_config(self: Any, *args: Any, **kwargs: Any) -> Any:
        precheck(self.speculative_config)
        config = create(self, *args, **kwargs)
        validate(config)
        return config

    module.EngineArgs.create_engine_config = create_engine_config


def _patch_eagle(module: Any) -> None:
    eagle_proposer = module.EagleProposer

    def __new__(cls: type, vllm_config: Any, *args: Any, **kwargs: Any) -> Any:
        if cls is eagle_proposer and is_vispec_draft(vllm_config.speculative_config):
            from vllm_vispec.proposer import ViSpecProposer

            cls = ViSpecProposer
        return object.__new__(cls)

    eagle_proposer.__new__ = __new__


_PATCHES: dict[str, Callable[[Any], None]] = {
    "vllm.config.vllm": _patch_config,
    "vllm.engine.arg_utils": _patch_engine_args,
    "vllm.v1.spec_decode.eagle": _patch_eagle,
}


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patches one module right after it is first executed, then steps aside."""

    def __init__(self, name: str, patch: Callable[[Any], None]) -> None:
        self.name = name
        self.patch = patch

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module: Any) -> None:
            exec_module(module)
            self.patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec
