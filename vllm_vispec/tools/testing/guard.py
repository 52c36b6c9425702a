"""The upgrade guards' tools: resolve a ledger symbol, read a signature, list a class's state.

Both guards (``tests/test_upgrade_guard.py`` for the V1 adapter, ``tests_v2/test_v2_guard.py``
for the V2 one) check the ledger against the installed vLLM with these, without an engine.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib
import re


def resolve(symbol: str) -> object:
    module_name, _, path = symbol.partition(":")
    obj: object = importlib.import_module(module_name)
    for part in path.split("."):
        if not hasattr(obj, part) and isinstance(obj, type(importlib)):
            importlib.import_module(f"{obj.__name__}.{part}")  # a submodule not yet loaded
        obj = getattr(obj, part)
    return obj


def parameters(fn: object) -> str:
    """``(a, b=1, *, c=None)`` without annotations: what callers and overrides depend on."""
    sig = inspect.signature(fn)
    return str(
        sig.replace(
            parameters=[p.replace(annotation=p.empty) for p in sig.parameters.values()],
            return_annotation=sig.empty,
        )
    )


def assigned_attributes(cls: type) -> set[str]:
    """Attributes a class (and its bases) assigns to ``self`` or declares, read from source."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is object:
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        names |= set(re.findall(r"self\.(\w+)\s*(?::[^=\n]*)?=", source))
        names |= {n for n, _ in inspect.getmembers(klass)}
        names |= set(getattr(klass, "__annotations__", {}))
        names |= {f.name for f in getattr(klass, "__dataclass_fields__", {}).values()}
    return names


def runtime_vllm_imports(skip: tuple[str, ...] = ()) -> set[str]:
    """``module:name`` of every vLLM import in the runtime (what ``vllm serve`` loads): the
    package but its tooling and the folders in ``skip`` (e.g. ``"runners/v2"``), plus kernels."""
    package = pathlib.Path(__file__).resolve().parents[2]
    skipped = [package / "tools", *(package / s for s in skip)]
    files = [*package.rglob("*.py"), *(package.parent / "kernels").rglob("*.py")]
    found: set[str] = set()
    for path in files:
        if any(path.is_relative_to(folder) for folder in skipped):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "vllm":
                found |= {f"{node.module}:{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("vllm.") and alias.asname:
                        module, _, name = alias.name.rpartition(".")
                        found.add(f"{module}:{name}")
    return found
