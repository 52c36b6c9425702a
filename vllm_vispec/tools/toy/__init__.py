"""Tooling: toy worlds (seeded synthetic pictures and their descriptions) and their trained
targets, so that drafts can be trained and measured without downloads."""

from __future__ import annotations

import importlib
from types import ModuleType

_MODULES = {"toy": "world", "grounded": "grounded_world", "content": "content_world"}
WORLDS = tuple(_MODULES)


def world_module(name: str) -> ModuleType:
    """A world's module (scenes, rendering, descriptions, ``prompts``, ``score``,
    ``fact_token``): ``toy`` is :mod:`~vllm_vispec.tools.toy.world`, ``grounded``
    :mod:`~vllm_vispec.tools.toy.grounded_world`, ``content``
    :mod:`~vllm_vispec.tools.toy.content_world`."""
    if name not in WORLDS:
        raise ValueError(f"unknown world {name!r}; choose one of {', '.join(WORLDS)}")
    return importlib.import_module(f"vllm_vispec.tools.toy.{_MODULES[name]}")
