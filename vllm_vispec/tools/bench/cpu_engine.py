"""Settings for small, fast-starting vLLM engines on a CPU (tests, demo, toy-world bench)."""

from __future__ import annotations

from typing import Any


def cpu_engine_kwargs(**overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a small, fast-starting ``vllm.LLM`` test engine on CPU.

    - float32: tiny random models have small logit margins; float32 keeps vLLM and HF greedy
      tokens identical.
    - block_size 32: the CPU attention backend wants multiples of 32 (its default is 128).
    - kv_cache_memory_bytes: otherwise vLLM sizes the KV cache from free RAM and refuses to start
      on a 24 GiB machine. (The legacy ``VLLM_CPU_KVCACHE_SPACE`` env var, when set, wins.)
    - enforce_eager: no torch.compile / graph capture, the engine starts in seconds.
    - max_num_seqs / max_num_batched_tokens small: cheaper dummy-run profiling.
    - "uni" executor: in-process worker (needs ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` for a fully
      in-process engine; otherwise vLLM switches CPU to "mp" itself).
    Pass ``model=...`` and any override (e.g. ``speculative_config``) as keyword arguments.
    """
    kwargs: dict[str, Any] = {
        "dtype": "float32",
        "block_size": 32,
        "kv_cache_memory_bytes": 256 * 1024**2,
        "max_model_len": 2048,
        "max_num_seqs": 8,
        "max_num_batched_tokens": 2048,
        "enforce_eager": True,
        "limit_mm_per_prompt": {"image": 2, "video": 0},
        "distributed_executor_backend": "uni",
        "seed": 0,
    }
    kwargs.update(overrides)
    return kwargs
