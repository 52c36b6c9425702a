"""ViSpec's EAGLE-2 tree shape (``vispec.tree``), and which steps draft trees.

Set in vLLM's ``additional_config`` (:mod:`vllm_vispec.settings`): ``false`` or absent, chains
of ``num_speculative_tokens`` (vLLM's own verification); ``true``, or an object of the fields
below, EAGLE-2 trees that the plugin verifies. Fields (defaults reproduce ViSpec's ``exp.sh``):

* ``depth`` (3): draft passes over the tree after the first, EAGLE-2's ``depth``; trees are at
  most ``depth + 1`` tokens deep.
* ``top_k`` (8): children expanded per node and nodes kept per level.
* ``chain`` (3): chain length, within a tree step, of the requests that draft chains (seeded
  requests; thinking budgets, structured output, min_tokens not yet reached, logprobs of
  processed logits: see ``ViSpecTreeProposer._tree_ok``).
* ``min_prob`` (0.0): trees sized by confidence: a request's tree keeps only the nodes whose
  cumulative draft probability (EAGLE-2's node value, the draft's estimate that the target
  accepts the node) is at least this, its best node always; expansion stops once no frontier
  node can reach it. 0 keeps K nodes (ViSpec's fixed-size trees).

How many tokens a step drafts per request is vLLM's K: ``num_speculative_tokens``, or, with
``num_speculative_tokens_per_batch_size``, the K of vLLM's schedule for the step's batch size.
A K of at least ``depth x top_k`` (the draft's KV look-ahead for a tree) drafts trees of up to
K nodes (ViSpec's ``total_token`` 30 is K = 29), a smaller K chains of K tokens, 0 nothing.
"""

from __future__ import annotations

import dataclasses
import math

from vllm_vispec.settings import setting

TREE_SETTING = setting("tree")
MAX_TREE_NODES = 63  # the root and its nodes fit the 64-bit ancestor rows of the kernels


@dataclasses.dataclass(frozen=True)
class TreeSettings:
    depth: int = 3
    top_k: int = 8
    chain: int = 3
    min_prob: float = 0.0

    @property
    def min_logprob(self) -> float:
        return math.log(self.min_prob) if self.min_prob > 0 else -math.inf

    @property
    def min_nodes(self) -> int:
        """The smallest K that drafts a tree: the draft writes depth x top_k KV slots."""
        return self.depth * self.top_k

    def mode(self, k: int) -> str:
        """``tree``, ``chain`` or ``off`` for a step whose K (vLLM's) is ``k``."""
        if k == 0:
            return "off"
        return "tree" if k >= self.min_nodes else "chain"

    def check(self, num_nodes: int) -> None:
        """ValueError (one line, with the fix) for a tree of ``num_nodes`` nodes that cannot run."""
        if self.chain > num_nodes:
            raise ValueError(
                f"{TREE_SETTING}: chain={self.chain} exceeds num_speculative_tokens ({num_nodes})"
            )
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
