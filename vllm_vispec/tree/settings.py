"""``VLLM_VISPEC_TREE``: whether ViSpec drafts trees, their shape, and when a step drafts one.

Unset or ``off``: chains of ``num_speculative_tokens`` (vLLM's own verification). ``on``, or
comma-separated ``key=value`` pairs: the draft proposes EAGLE-2 trees of
``num_speculative_tokens`` nodes (ViSpec's ``total_token`` 30 is ``num_speculative_tokens``
29) and the plugin verifies them. Keys (defaults reproduce ViSpec's ``exp.sh``):

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

``tree_budget=0`` never drafts trees: ``VLLM_VISPEC_TREE=tree_budget=0,chain_budget=32`` keeps
chains of ``chain`` tokens (at most ``num_speculative_tokens``) and stops drafting under load.

Read by start-up validation in the front end and by the proposer in the workers.
"""

from __future__ import annotations

import dataclasses
import os

TREE_ENV = "VLLM_VISPEC_TREE"
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
                f"{TREE_ENV}: chain={self.chain} exceeds num_speculative_tokens ({num_nodes})"
            )
        if self.tree_budget == 0:
            return  # chains or nothing: no tree shape to check
        if not 1 <= num_nodes <= MAX_TREE_NODES:
            raise ValueError(
                f"{TREE_ENV} drafts trees of num_speculative_tokens nodes, at most "
                f"{MAX_TREE_NODES} (got {num_nodes}); ViSpec's default tree is 29"
            )
        if self.depth * self.top_k > num_nodes:
            raise ValueError(
                f"{TREE_ENV}: depth x top_k ({self.depth} x {self.top_k}) draft slots exceed "
                f"num_speculative_tokens ({num_nodes}), vLLM's KV look-ahead; lower depth or "
                "top_k or raise num_speculative_tokens"
            )
        if num_nodes > self.top_k + self.depth * self.top_k**2:
            raise ValueError(
                f"{TREE_ENV}: a tree of depth {self.depth} and top_k {self.top_k} has fewer "
                f"candidates than num_speculative_tokens ({num_nodes}); lower it"
            )


def tree_settings() -> TreeSettings | None:
    """The settings from ``VLLM_VISPEC_TREE`` (None: trees off); ValueError for a bad value."""
    raw = os.environ.get(TREE_ENV, "").strip().lower()
    if raw in ("", "0", "off", "false", "no"):
        return None
    if raw in ("1", "on", "true", "yes"):
        return TreeSettings()
    fields = {f.name for f in dataclasses.fields(TreeSettings)}
    values: dict[str, int] = {}
    for item in raw.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in fields or not value.strip().isdigit():
            raise ValueError(
                f"{TREE_ENV}={raw!r}: expected 'on', 'off' or key=value pairs with integer "
                f"values and keys {', '.join(sorted(fields))} (e.g. depth=3,top_k=8)"
            )
        values[key] = int(value)
    settings = TreeSettings(**values)
    if min(settings.depth, settings.top_k, settings.chain) < 1:
        raise ValueError(f"{TREE_ENV}={raw!r}: depth, top_k and chain must be at least 1")
    return settings
