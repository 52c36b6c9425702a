"""Build a ViSpec proposer where vLLM builds an ``EagleProposer`` for a ViSpec draft.

``EagleProposer.__new__`` returns :class:`~vllm_vispec.runners.v1.proposer.ViSpecProposer`, or
:class:`~vllm_vispec.runners.v1.tree_proposer.ViSpecTreeProposer` when ``vispec.tree`` is on; being
subclasses, they pass every ``isinstance(drafter, EagleProposer)`` check in the runners, and
every other draft is untouched.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from vllm_vispec.validation import is_vispec_draft


def apply(module: ModuleType) -> None:
    eagle_proposer = module.EagleProposer

    def __new__(cls: type, vllm_config: Any, *args: Any, **kwargs: Any) -> Any:
        if cls is eagle_proposer and is_vispec_draft(vllm_config.speculative_config):
            cls = _vispec_proposer(vllm_config)
        return object.__new__(cls)

    eagle_proposer.__new__ = __new__


def _vispec_proposer(vllm_config: Any) -> type:
    from vllm_vispec.settings import vispec_settings

    if vispec_settings(vllm_config).tree is not None:
        from vllm_vispec.runners.v1.tree_proposer import ViSpecTreeProposer

        return ViSpecTreeProposer
    from vllm_vispec.runners.v1.proposer import ViSpecProposer

    return ViSpecProposer
