"""One target step's tree rows: where they sit, what they attend to, what the target accepts.

A request verifying a tree has its root (the last accepted token) and its nodes scheduled as
ordinary consecutive tokens, so vLLM's slot mapping and computed-token accounting stay linear.
This object then

* moves each node's position to root + depth (every M-RoPE row alike), after vLLM has computed
  the slots, and puts the linear positions back before the draft runs;
* recomputes the target attention of the tree rows over the cached prefix plus each node's
  ancestors (:func:`vllm_vispec.kernels.tree_paged_attention`);
* walks each tree (:func:`~vllm_vispec.tree.walk.walk_tree`) on the target's picks and writes
  vLLM's usual ``[B, <= nodes + 1]`` output rows;
* copies the accepted nodes' target KV into the slots right after the root, so that the next
  step finds the accepted sequence contiguous, exactly where vLLM's accounting puts it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from vllm.v1.sample.metadata import SamplingMetadata
from vllm.v1.sample.ops.bad_words import apply_bad_words
from vllm.v1.sample.ops.penalties import apply_all_penalties
from vllm.v1.sample.ops.topk_topp_sampler import random_sample
from vllm.v1.sample.rejection_sampler import apply_sampling_constraints

from vllm_vispec.kernels.tree import ancestor_masks, compact_kv, tree_paged_attention
from vllm_vispec.tree.walk import node_depths, walk_tree

_active: list[TreeStep] = []


@contextlib.contextmanager
def verifying(step: TreeStep | None) -> Iterator[None]:
    """Within: the target forward whose attention layers must mask ``step``'s tree rows."""
    if step is None:
        yield
        return
    _active.append(step)
    try:
        yield
    finally:
        _active.pop()


def active_step() -> TreeStep | None:
    """The step whose target forward is running, if it verifies trees."""
    return _active[-1] if _active else None


class TreeStep:
    """The tree requests of one step (rows of vLLM's input batch that verify a tree)."""

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
        self.node_index = torch.arange(width, device=device)[None, :]
        self.valid = valid = self.node_index < self.num_nodes[:, None]  # [R, width] real nodes
        starts = torch.tensor(query_starts, dtype=torch.long, device=device)
        # Flat input rows of every node, and per node its tree and its index in the tree.
        self.tree_of, self.node_of = valid.nonzero(as_tuple=True)
        self.row_masks = self.masks[self.tree_of, self.node_of]
        self.rows = starts[self.tree_of] + self.node_of
        self.root_rows = starts[self.tree_of]
        self.query_start_loc = torch.zeros(len(parents) + 1, dtype=torch.int32, device=device)
        self.query_start_loc[1:] = self.num_nodes.cumsum(0)
        self.starts = starts
        self.path: torch.Tensor | None = None  # [R, width] accepted nodes, set by verify()
        # Recorded by attend(): the step's slots and every target layer's K/V cache views.
        self.slot_mapping: torch.Tensor | None = None
        self.caches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._plan: tuple[torch.Tensor, ...] | None = None  # CPU attention's gather, per step
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
        if not query.is_cuda:
            output[self.rows] = self._attend_gathered(query, k_cache, v_cache, block_table, scale)
            return
        width = self.parents.shape[1]
        empty = self.bases.new_zeros(0)
        output[self.rows] = tree_paged_attention(
            query[self.rows],
            k_cache,
            v_cache,
            self.query_start_loc,
            block_table[self.batch_rows],
            self.bases,
            self.bases[:, None] + self.node_index,
            self.row_masks,
            empty,
            empty,
            torch.zeros_like(self.query_start_loc),
            scale,
            max_query_len=width,
        ).to(output.dtype)

    def _attend_gathered(
        self,
        query: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        block_table: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        """The CPU path: one masked SDPA over each tree's whole range [0, root + nodes).

        Same result as the reference kernel (its nodes sit right after the context, so a
        boolean mask over that range says everything), with the gather plan and the mask built
        once per step for every layer: the reference's per-request loop cost a millisecond per
        layer on CPU.
        """
        if self._plan is None:
            self._plan = self._gather_plan(block_table, k_cache.shape[1])
        blocks, offsets, mask, q_rows = self._plan
        q = query[q_rows].transpose(1, 2)  # [R, nh, n, hd]
        k = k_cache[blocks, offsets].transpose(1, 2)  # [R, nkv, L, hd]
        v = v_cache[blocks, offsets].transpose(1, 2)
        out = F.scaled_dot_product_attention(
            q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask, scale=scale, enable_gqa=True
        )
        return out.transpose(1, 2)[self.tree_of, self.node_of]

    def _gather_plan(self, block_table: torch.Tensor, block_size: int) -> tuple[torch.Tensor, ...]:
        width = self.parents.shape[1]
        ends = self.bases + self.num_nodes
        pos = torch.arange(int(ends.max()), device=self.device)
        in_range = pos[None, :] < ends[:, None]  # [R, L]
        table = block_table[self.batch_rows].long()
        blocks = torch.gather(table, 1, (pos // block_size)[None, :].expand(len(ends), -1))
        blocks = torch.where(in_range, blocks, table[:, :1])
        offsets = (pos % block_size)[None, :].expand_as(blocks)
        rel = pos[None, None, :] - self.bases[:, None, None]  # [R, 1, L] node index of a key
        bits = (self.masks[:, :, None] >> rel.clamp(0, 63)) & 1  # [R, n, L]
        mask = (rel < 0) | ((bits == 1) & (rel < width))
        valid = self.valid
        mask = mask & in_range[:, None, :] & valid[:, :, None]
        mask[:, :, 0] |= ~valid  # padding rows see one key (no NaN); they are not read back
        q_rows = self.starts[:, None] + torch.where(valid, self.node_index, 0)
        return blocks, offsets, mask[:, None], q_rows

    # -- verification ---------------------------------------------------------------------------

    def node_logits(self, logits: torch.Tensor, num_draft_tokens: Sequence[int]) -> torch.Tensor:
        """The target's logits at every tree node (a copy), from vLLM's sampled rows:
        ``num_draft_tokens`` + 1 per request back to back, a tree's root then its nodes."""
        ends = torch.as_tensor(np.cumsum(np.asarray(num_draft_tokens) + 1), device=self.device)
        first = ends[self.batch_rows] - self.num_nodes
        return logits[first[self.tree_of] + self.node_of].float()

    def verify(
        self,
        node_logits: torch.Tensor,
        sampling_metadata: SamplingMetadata,
        sampled_token_ids: torch.Tensor,
    ) -> None:
        """Walk every tree on the target's picks; write its rows of ``sampled_token_ids``."""
        constrained = self._constrain(node_logits.clone(), sampling_metadata)
        picks = torch.zeros_like(self.parents)
        picks[self.tree_of, self.node_of] = self._pick(constrained, sampling_metadata)
        out, self.path = walk_tree(self.parents, self.tokens, self.num_nodes, picks)
        self.outputs, self.sampling_rows = out, sampled_token_ids.shape[0]
        width = min(out.shape[1], sampled_token_ids.shape[1])
        sampled_token_ids[self.batch_rows] = -1
        sampled_token_ids[self.batch_rows, :width] = out[:, :width].to(sampled_token_ids.dtype)

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

    def _constrain(self, logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
        """What vLLM's rejection sampler applies at a chain's rows before it picks (penalties,
        allowed tokens, bad words), with each node's own history: its ancestors, not the nodes
        before it in the flat list. min_tokens and thinking budgets take chains (proposer)."""
        rows = self.batch_rows[self.tree_of]
        history = None
        if not meta.no_penalties or meta.bad_words_token_ids:
            history = self.histories(meta.output_token_ids)
        if not meta.no_penalties:
            assert meta.prompt_token_ids is not None and history is not None
            logits = apply_all_penalties(
                logits,
                meta.prompt_token_ids[rows],
                meta.presence_penalties[rows],
                meta.frequency_penalties[rows],
                meta.repetition_penalties[rows],
                history,
            )
        if meta.allowed_token_ids_mask is not None:
            logits.masked_fill_(meta.allowed_token_ids_mask[rows], float("-inf"))
        if meta.bad_words_token_ids:
            assert history is not None
            words = meta.bad_words_token_ids
            per_node = {i: words[b] for i, b in enumerate(rows.tolist()) if b in words}
            apply_bad_words(logits, per_node, history)
        return logits

    def _pick(self, logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
        """One token per node: the argmax for greedy requests, else a draw from the target's
        distribution after temperature, top-k and top-p (as vLLM's chain verification)."""
        greedy = logits.argmax(dim=-1)
        if meta.all_greedy:
            return greedy
        counts = torch.zeros(meta.temperature.shape[0], dtype=torch.long, device=self.device)
        counts[self.batch_rows] = self.num_nodes
        processed = apply_sampling_constraints(logits, counts.cumsum(0), meta)
        probs = processed.softmax(dim=-1, dtype=torch.float32)
        row_batch = self.batch_rows[self.tree_of]
        # vLLM's sampler, with each seeded request's generator on every one of its nodes.
        generators = {
            i: meta.generators[b] for i, b in enumerate(row_batch.tolist()) if b in meta.generators
        }
        drawn = random_sample(probs, generators)
        is_greedy = meta.temperature[row_batch] < 1e-5
        return torch.where(is_greedy, greedy, drawn)

    def write_logprobs(self, node_logits: torch.Tensor, logprobs: Any, sampler: Any) -> None:
        """Replace the tree requests' rows of vLLM's ``LogprobsTensors`` (request b's token j at
        row b * width + j) by the target's log-probabilities at the accepted path's nodes."""
        assert self.path is not None
        width = logprobs.selected_token_ranks.shape[0] // self.sampling_rows
        tree, j = (self.path >= 0).nonzero(as_tuple=True)
        flat = self.query_start_loc[tree].long() + self.path[tree, j]
        tokens = self.outputs[tree, j].clamp(min=0)
        rows = self.batch_rows[tree] * width + j
        lp = node_logits[flat]
        if not sampler.is_logits_logprobs_mode:
            lp = sampler.sampler.compute_logprobs(lp)
        k = logprobs.logprobs.shape[1] - 1
        mine = sampler.sampler.gather_logprobs(lp, k, tokens)
        logprobs.logprob_token_ids[rows] = mine.logprob_token_ids.to(logprobs.logprob_token_ids)
        logprobs.logprobs[rows] = mine.logprobs.to(logprobs.logprobs)
        logprobs.selected_token_ranks[rows] = mine.selected_token_ranks.to(
            logprobs.selected_token_ranks
        )

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
