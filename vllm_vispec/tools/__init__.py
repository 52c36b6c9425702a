"""Tooling: the reference draft, training, benchmarks, toy worlds, test fixtures, demo and CLI.

Nothing here is imported by what ``vllm serve`` loads (``tests/test_import_hygiene.py``); the
tooling extras (``[train]``, ``[bench]``) install what it needs beyond the runtime.
"""
