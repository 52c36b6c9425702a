"""Shared test set-up: in-process vLLM engines on CPU and session-scoped tiny models."""

from __future__ import annotations

import os

# In-process engines start in seconds instead of ~20 s; the KV cache must be bounded on CPU.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _guard_triton_dispatcher() -> None:
    """Work around a vLLM 0.32 bug with several in-process engines in one interpreter.

    ``vllm.triton_utils.dispatcher`` scans ``vars()`` of every module attribute; once numba /
    llvmlite is imported (vLLM's ngram proposer does) one of those objects returns a ``__dict__``
    without ``.get`` and the next engine fails to start. Give the scan a ``vars`` that skips them.
    """
    from vllm.triton_utils import dispatcher

    def safe_vars(obj: object) -> dict:
        found = vars(obj)
        return found if isinstance(found, dict) else {}

    dispatcher.vars = safe_vars


_guard_triton_dispatcher()
