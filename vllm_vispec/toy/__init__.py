"""Tooling: toy worlds (seeded synthetic pictures and their descriptions) and their trained
targets, so that drafts can be trained and measured without downloads."""

from __future__ import annotations

import importlib
from types import ModuleType

WORLDS = ("toy", "grounded")


def world_module(name: str) -> ModuleType:
    """A world's module (scenes, rendering, descriptions, ``prompts``, ``score``,
    ``fact_token``): ``toy`` is :mod:`~vllm_vispec.toy.world`, ``grounded``
    :mod:`~vllm_vispec.toy.grounded_world`."""
    if name not in WORLDS:
        raise ValueError(f"unknown world {name!r}; choose {' or '.join(WORLDS)}")
    module = "world" if name == "toy" else "grounded_world"
    return importlib.import_module(f"vllm_vispec.toy.{module}")
