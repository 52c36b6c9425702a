"""One target step's tree verification: where the nodes sit, what they see, what is accepted.

A request verifying a tree has its root (the last accepted token) and its nodes scheduled as
ordinary consecutive tokens, so vLLM's slot mapping and computed-token accounting stay linear.
This object then

* moves each node's position to root + depth (every M-RoPE row alike), after vLLM has computed
  the slots, and puts the linear positions back before the draft runs;
* recomputes the target attention of the tree rows over the cached prefix plus each node's
  ancestors (:class:`vllm_vispec.kernels.tree.VerifyAttention`);
* walks each tree (:func:`~vllm_vispec.tree.walk.walk_tree`) on the target's pick at every node
  (the runner adapter picks them with its sampling state) and writes vLLM's usual
  ``[B, <= nodes + 1]`` output rows;
* copies the accepted nodes' target KV into the slots right after the root, so that the next
  step finds the accepted sequence contiguous, exactly where vLLM's accounting puts it.

It knows no runner: a runner adapter builds one per target step from what the scheduler kept of
a :class:`~vllm_vispec.tree.proposal.Proposal` and calls these operations in order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from vllm_vispec.kernels.tree import VerifyAttention, ancestor_masks, compact_kv
from vllm_vispec.tree.walk import node_depths, walk_tree


class TreeVerify:
    """The tree requests of one target step (rows of the runner's batch that verify a tree)."""

    def __init__(
        self,
        batch_rows: Sequence[int],
        query_starts: Sequence[int],
        bases: Sequence[int],
        parents: Sequence[np.ndarray],
        tokens: Sequence[Sequence[int]],
        device: torch.device,
    ) -> None:
        """Per tree request, in input-batch order: its input-batch row, its first scheduled
        token's index, its computed tokens (the root's position), node parents (root first)
        and drafted tokens."""
        assert list(batch_rows) == sorted(batch_rows), "tree requests must come in batch order"
        width = max(len(p) for p in parents)
        pad = np.full((len(parents), width), -1, dtype=np.int64)
        tok = np.zeros((len(parents), width), dtype=np.int64)
        for r, (p, t) in enumerate(zip(parents, tokens, strict=True)):
            pad[r, : len(p)] = p
            tok[r, 1 : len(p)] = t
        self.device = device
        self._trees = [(np.asarray(p), list(t)) for p, t in zip(parents, tokens, strict=True)]
        self.batch_rows = torch.tensor(batch_rows, dtype=torch.long, device=device)
        self.num_nodes = torch.tensor([len(p) for p in parents], dtype=torch.long, device=device)
        self.parents = torch.from_numpy(pad).to(device)
        self.tokens = torch.from_numpy(tok).to(device)
        self.bases = torch.tensor(bases, dtype=torch.long, device=device)
        self.depths = node_depths(self.parents)
        self.masks = ancestor_masks(self.parents)
        self.starts = torch.tensor(query_starts, dtype=torch.long, device=device)
        self.attention = VerifyAttention(
            self.batch_rows, self.starts, self.bases, self.masks, self.num_nodes
        )
        # Flat over the real nodes: their tree, their index in it, their input row.
        self.tree_of, self.node_of = self.attention.tree_of, self.attention.node_of
        self.rows, self.query_start_loc = self.attention.rows, self.attention.query_start_loc
        self.root_rows = self.starts[self.tree_of]
        self.path: torch.Tensor | None = None  # [R, width] accepted nodes, set by accept()
        self.outputs: torch.Tensor | None = None  # [R, width] the rows accept() wrote
        self.sampling_rows = 0  # rows of the runner's sampled_token_ids
        # Recorded by attend(): the step's slots and every target layer's K/V cache views.
        self.slot_mapping: torch.Tensor | None = None
        self.caches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._saved: list[tuple[torch.Tensor, torch.Tensor]] = []

    # -- positions ------------------------------------------------------------------------------

    def set_positions(self, positions: torch.Tensor) -> None:
        """Nodes to root + depth in ``positions`` ([T] or M-RoPE's [3, T]), kept for restore."""
        depth = self.depths[self.tree_of, self.node_of]
        self._saved.append((positions, positions[..., self.rows].clone()))
        positions[..., self.rows] = positions[..., self.root_rows] + depth.to(positions.dtype)

    def restore_positions(self) -> None:
        """The linear positions vLLM computed (the draft's first pass reads them)."""
        for positions, saved in self._saved:
            positions[..., self.rows] = saved
        self._saved.clear()

    # -- target attention -----------------------------------------------------------------------

    def attend(
        self,
        query: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        block_table: torch.Tensor,
        slot_mapping: torch.Tensor,
        output: torch.Tensor,
        scale: float,
    ) -> None:
        """Overwrite ``output`` [T, nh, hd] at the tree rows with tree-masked attention over
        the cache (the rows' own K/V already written at their linear slots)."""
        self.slot_mapping = slot_mapping
        self.caches.append((k_cache, v_cache))
        out = self.attention(query, k_cache, v_cache, block_table, scale)
        output[self.rows] = out.to(output.dtype)

    # -- verification ---------------------------------------------------------------------------

    def node_logits(self, logits: torch.Tensor, num_draft_tokens: Sequence[int]) -> torch.Tensor:
        """The target's logits at every tree node (a copy), from vLLM's sampled rows:
        ``num_draft_tokens`` + 1 per request back to back, a tree's root then its nodes."""
        ends = torch.as_tensor(np.cumsum(np.asarray(num_draft_tokens) + 1), device=self.device)
        first = ends[self.batch_rows] - self.num_nodes
        return logits[first[self.tree_of] + self.node_of].float()

    def accept(self, picks: torch.Tensor, sampled_token_ids: torch.Tensor) -> None:
        """Walk every tree on the target's pick at each node (``picks``, flat node order) and
        write the tree requests' rows of vLLM's ``sampled_token_ids`` [B, K + 1]."""
        grid = torch.zeros_like(self.parents)
        grid[self.tree_of, self.node_of] = picks.to(grid.dtype)
        out, self.path = walk_tree(self.parents, self.tokens, self.num_nodes, grid)
        self.outputs, self.sampling_rows = out, sampled_token_ids.shape[0]
        width = min(out.shape[1], sampled_token_ids.shape[1])
        sampled_token_ids[self.batch_rows] = -1
        sampled_token_ids[self.batch_rows, :width] = out[:, :width].to(sampled_token_ids.dtype)

    def accepted(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per accepted output token: its tree, its index on the path, its node (flat order)
        and the token, for a runner that writes per-token results such as logprobs."""
        assert self.path is not None and self.outputs is not None
        tree, j = (self.path >= 0).nonzero(as_tuple=True)
        node = self.query_start_loc[tree].long() + self.path[tree, j]
        return tree, j, node, self.outputs[tree, j].clamp(min=0)

    def histories(self, output_token_ids: Sequence[Sequence[int]]) -> list[list[int]]:
        """Per node (flat order): the request's output so far, then the node's path from the
        root's child down to the node itself: what the target has said when it predicts the
        node's child, i.e. the history a chain row at that depth would have."""
        out = []
        for batch_row, (parents, tokens) in zip(self.batch_rows.tolist(), self._trees, strict=True):
            prefix = list(output_token_ids[batch_row])
            paths: list[list[int]] = [[]]
            for node in range(1, len(parents)):
                paths.append([*paths[parents[node]], tokens[node - 1]])
            out += [prefix + path for path in paths]
        return out

    # -- after verification ---------------------------------------------------------------------

    def compact(self) -> None:
        """Copy each accepted node's K/V (every target layer) to the slot right after its
        predecessor on the path."""
        assert self.path is not None and self.slot_mapping is not None
        slot_mapping = self.slot_mapping
        depth = torch.arange(self.path.shape[1], device=self.device)[None, :].expand_as(self.path)
        moved = (self.path > 0) & (self.path != depth)
        if not bool(moved.any()):
            return  # the top-1 chain was accepted: already in place
        tree, j = moved.nonzero(as_tuple=True)
        src = slot_mapping[self.starts[tree] + self.path[tree, j]].long()
        dst = slot_mapping[self.starts[tree] + j].long()
        for k_cache, v_cache in self.caches:
            compact_kv(k_cache, v_cache, src, dst)

    def draft_order(self, num_tokens: int) -> torch.Tensor:
        """Row order for the draft's first pass: each tree's accepted path first (root,
        accepted nodes), so the draft reads the accepted sequence as a chain."""
        assert self.path is not None
        order = torch.arange(num_tokens, device=self.device)
        tree, j = (self.path >= 0).nonzero(as_tuple=True)
        order[self.starts[tree] + j] = self.starts[tree] + self.path[tree, j]
        return order
