"""Refuse a ViSpec set-up that cannot run while vLLM builds its config, before any worker starts.

Wraps ``EngineArgs.create_engine_config`` (``LLM(...)`` and ``vllm serve`` alike): the raw
speculative config is prechecked before vLLM parses the draft (whose own errors would not name
the file or the fix) and an official ViSpec checkpoint in it replaced by its converted copy, and the
draft lengths ``vispec.goodput`` may choose declared as a batch-size schedule; the built
``VllmConfig`` is validated after.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from vllm_vispec.validation import precheck, validate


def apply(module: ModuleType) -> None:
    create = module.EngineArgs.create_engine_config

    def create_engine_config(self: Any, *args: Any, **kwargs: Any) -> Any:
        # vLLM's signature is passed through untouched (it grows with releases); only the
        # speculative config is read.
        self.speculative_config = precheck(
            self.speculative_config,
            self.tensor_parallel_size,
            self.download_dir,
            self.additional_config,
        )
        config = create(self, *args, **kwargs)
        validate(config)
        return config

    module.EngineArgs.create_engine_config = create_engine_config
