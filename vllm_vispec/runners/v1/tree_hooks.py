"""Ledger entries ``tree_hooks``: a tree-drafting engine gets its tree verification once its V1
runner has loaded the model (the target's attention layers exist then, and the drafter too).

Light at import (the ledger imports it at ``register()``); the verification itself is in
:mod:`~vllm_vispec.runners.v1.tree_verifier`, imported by the first engine that drafts trees.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any


def apply_gpu(module: ModuleType) -> None:
    """After ``GPUModelRunner.load_model``."""
    module.GPUModelRunner.load_model = _after_load(module.GPUModelRunner.load_model)


def apply_cpu(module: ModuleType) -> None:
    """After ``CPUModelRunner.load_model`` (it does not call the GPU runner's)."""
    module.CPUModelRunner.load_model = _after_load(module.CPUModelRunner.load_model)


def _after_load(load_model: Any) -> Any:
    @functools.wraps(load_model)
    def load_model_then_hook_trees(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = load_model(self, *args, **kwargs)
        from vllm_vispec.runners.v1.tree_proposer import ViSpecTreeProposer

        drafter = getattr(self, "drafter", None)
        if isinstance(drafter, ViSpecTreeProposer) and drafter.verifier is None:
            from vllm_vispec.runners.v1.tree_verifier import install

            drafter.attach(install(self))
        return out

    return load_model_then_hook_trees
