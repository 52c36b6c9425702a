"""Whether ViSpec drafts trees, their shape, and when a step drafts one (``vispec.tree``).

Set in vLLM's ``additional_config`` (:mod:`vllm_vispec.settings`): ``false`` or absent, chains
of ``num_speculative_tokens`` (vLLM's own verification); ``true``, or an object of the fields
below, EAGLE-2 trees of ``num_speculative_tokens`` nodes (ViSpec's ``total_token`` 30 is
``num_speculative_tokens`` 29) that the plugin verifies. Fields (defaults reproduce ViSpec's
``exp.sh``):

* ``depth`` (3): draft passes over the tree after the first, EAGLE-2's ``depth``; trees are at
  most ``depth + 1`` tokens deep.
* ``top_k`` (8): children expanded per node and nodes kept per level.
* ``chain`` (3): chain length for steps past ``tree_budget`` and for requests that draft
  chains (seeded requests, at every load; thinking budgets, structured output, min_tokens not
  yet reached, logprobs of processed logits: see ``ViSpecProposer._tree_ok``).
* ``tree_budget`` (64): a step drafts trees while batch size x (nodes + 1), the tokens the
  target verifies, stays within it; past it, chains.
* ``chain_budget`` (0, no limit): past batch size x (chain + 1) > chain_budget the step drafts
  nothing.

``tree_budget`` 0 never drafts trees: ``{"tree_budget": 0, "chain_budget": 32}`` keeps chains
of ``chain`` tokens (at most ``num_speculative_tokens``) and stops drafting under load.
"""

from __future__ import annotations

import dataclasses

TREE_SETTING = "vispec.tree"
MAX_TREE_NODES = 63  # the root and its nodes fit the 64-bit ancestor rows of the kernels


@dataclasses.dataclass(frozen=True)
class TreeSettings:
    depth: int = 3
    top_k: int = 8
    chain: int = 3
    tree_budget: int = 64
    chain_budget: int = 0

    def mode(self, batch_size: int, num_nodes: int) -> str:
        """``tree``, ``chain`` or ``off`` for a step of ``batch_size`` requests."""
        if batch_size * (num_nodes + 1) <= self.tree_budget:
            return "tree"
        if not self.chain_budget or batch_size * (self.chain + 1) <= self.chain_budget:
            return "chain"
        return "off"

    def check(self, num_nodes: int) -> None:
        """ValueError (one line, with the fix) for a tree of ``num_nodes`` nodes that cannot run."""
        if self.chain > num_nodes:
            raise ValueError(
                f"{TREE_SETTING}: chain={self.chain} exceeds num_speculative_tokens ({num_nodes})"
            )
        if self.tree_budget == 0:
            return  # chains or nothing: no tree shape to check
        if not 1 <= num_nodes <= MAX_TREE_NODES:
            raise ValueError(
                f"{TREE_SETTING} drafts trees of num_speculative_tokens nodes, at most "
                f"{MAX_TREE_NODES} (got {num_nodes}); ViSpec's default tree is 29"
            )
        if self.depth * self.top_k > num_nodes:
            raise ValueError(
                f"{TREE_SETTING}: depth x top_k ({self.depth} x {self.top_k}) draft slots exceed "
                f"num_speculative_tokens ({num_nodes}), vLLM's KV look-ahead; lower depth or "
                "top_k or raise num_speculative_tokens"
            )
        if num_nodes > self.top_k + self.depth * self.top_k**2:
            raise ValueError(
                f"{TREE_SETTING}: a tree of depth {self.depth} and top_k {self.top_k} has fewer "
                f"candidates than num_speculative_tokens ({num_nodes}); lower it"
            )
