"""EAGLE-2 tree drafting and lossless tree verification inside vLLM's V1 runner.

``settings`` (what the user turns on), ``expand`` (the draft's top-k expansion and the choice
of nodes), ``walk`` (verification: which nodes the target accepts) and ``step`` (one target
step's tree rows: positions, masks, the accepted paths and the KV they leave behind) are kept
apart; the vLLM hooks that use them are patches in :mod:`vllm_vispec.patches`.
"""
