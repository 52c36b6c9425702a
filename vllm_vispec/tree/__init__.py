"""EAGLE-2 tree drafting and lossless tree verification, knowing no runner.

``settings`` (what the user turns on), ``expand`` (the draft's top-k expansion and the choice
of nodes), ``proposal`` (what a step drafted, per request), ``walk`` (which nodes the target
accepts) and ``verify`` (one target step's tree rows: positions, masks, the accepted paths and
the KV they leave behind) are kept apart; a runner adapter (:mod:`vllm_vispec.runners.v1`)
drives them through vLLM's steps.
"""
