"""Build a :class:`~vllm_vispec.proposer.ViSpecProposer` where vLLM builds an ``EagleProposer``
for a ViSpec draft.

``EagleProposer.__new__`` returns the subclass; being a subclass, it passes every
``isinstance(drafter, EagleProposer)`` check in the runners, and every other draft is untouched.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from vllm_vispec.validation import is_vispec_draft


def apply(module: ModuleType) -> None:
    eagle_proposer = module.EagleProposer

    def __new__(cls: type, vllm_config: Any, *args: Any, **kwargs: Any) -> Any:
        if cls is eagle_proposer and is_vispec_draft(vllm_config.speculative_config):
            from vllm_vispec.proposer import ViSpecProposer

            cls = ViSpecProposer
        return object.__new__(cls)

    eagle_proposer.__new__ = __new__
