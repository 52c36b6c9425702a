"""Tooling: ``vllm-vispec bench`` and what it shares with tests (``vllm serve``, CPU engines).

Never imported by the runtime (what ``register()`` loads).
"""
