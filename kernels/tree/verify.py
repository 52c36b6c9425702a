"""Tree attention for a target step's verification rows, one object per step for every layer.

A request verifying a tree has its nodes scheduled right after its context: node j sits at
raw position ``base + j``, and a node's row sees the whole context plus its ancestors.
:class:`VerifyAttention` is built once per step from the trees' shape and called by each target
attention layer. It dispatches: on CUDA the Triton kernel (:func:`tree_paged_attention`); on
other devices one masked SDPA per layer over each tree's range ``[0, base + nodes)``, whose
gather plan and mask are built at the first layer and reused by the others (the reference's
per-request loop cost a millisecond per layer on CPU). Both equal
:func:`~.naive.naive_tree_paged_attention` (``tests/test_tree_kernels.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class VerifyAttention:
    """The tree rows of one target step: where they sit and what each sees."""

    def __init__(
        self,
        batch_rows: torch.Tensor,
        starts: torch.Tensor,
        bases: torch.Tensor,
        masks: torch.Tensor,
        num_nodes: torch.Tensor,
    ) -> None:
        """Per tree (in input-batch order): its input-batch row, its root's flat query row,
        its root's raw position, its ancestor masks [R, W] (int64, root first; see
        :func:`~.masks.ancestor_masks`) and its node count with the root."""
        self.batch_rows, self.starts, self.bases = batch_rows, starts, bases
        self.masks, self.num_nodes = masks, num_nodes
        width = masks.shape[1]
        self.node_index = torch.arange(width, device=masks.device)[None, :]
        self.valid = self.node_index < num_nodes[:, None]  # [R, W] real nodes
        # Flat over the real nodes: their tree, their index in it, their query row.
        self.tree_of, self.node_of = self.valid.nonzero(as_tuple=True)
        self.rows = starts[self.tree_of] + self.node_of
        self.query_start_loc = torch.zeros(len(bases) + 1, dtype=torch.int32, device=bases.device)
        self.query_start_loc[1:] = num_nodes.cumsum(0)
        self._plan: tuple[torch.Tensor, ...] | None = None

    def __call__(
        self,
        query: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        block_table: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        """Attention of the tree rows of ``query`` [T, nh, hd] -> [len(rows), nh, hd] (fp32 on
        CUDA, q's dtype elsewhere); ``block_table`` is the step's, one row per batch row."""
        if query.is_cuda:
            from . import tree_paged_attention

            args = self.kernel_args(query, k_cache, v_cache, block_table, scale)
            return tree_paged_attention(*args, max_query_len=self.masks.shape[1])
        return self.dense(query, k_cache, v_cache, block_table, scale)

    def kernel_args(
        self,
        query: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        block_table: torch.Tensor,
        scale: float,
    ) -> tuple:
        """The positional arguments of :func:`~vllm_vispec.kernels.tree_paged_attention` (and of
        its reference) for the tree rows: no unseen spans, node j at ``base + j``."""
        empty = self.bases.new_zeros(0)
        return (
            query[self.rows],
            k_cache,
            v_cache,
            self.query_start_loc,
            block_table[self.batch_rows],
            self.bases,
            self.bases[:, None] + self.node_index,
            self.masks[self.tree_of, self.node_of],
            empty,
            empty,
            torch.zeros_like(self.query_start_loc),
            scale,
        )

    def dense(
        self,
        query: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        block_table: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        """The CPU path on any device (benchmarks/gpu_check.py times it against the kernel):
        one SDPA over each tree's gathered range under its dense [W, L] mask. The range's
        unwritten slots are read under a zero mask, so they must hold finite values."""
        if self._plan is None:
            self._plan = self._gather_plan(block_table, k_cache.shape[1])
        blocks, offsets, mask, q_rows = self._plan
        q = query[q_rows].transpose(1, 2)  # [R, nh, W, hd]
        k = k_cache[blocks, offsets].transpose(1, 2)  # [R, nkv, L, hd]
        v = v_cache[blocks, offsets].transpose(1, 2)
        out = F.scaled_dot_product_attention(
            q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask, scale=scale, enable_gqa=True
        )
        return out.transpose(1, 2)[self.tree_of, self.node_of]

    def _gather_plan(self, block_table: torch.Tensor, block_size: int) -> tuple[torch.Tensor, ...]:
        """Cache coordinates of every tree's range, the [R, 1, W, L] mask and the query rows."""
        width = self.masks.shape[1]
        ends = self.bases + self.num_nodes
        pos = torch.arange(int(ends.max()), device=self.bases.device)
        in_range = pos[None, :] < ends[:, None]  # [R, L]
        table = block_table[self.batch_rows].long()
        blocks = torch.gather(table, 1, (pos // block_size)[None, :].expand(len(ends), -1))
        blocks = torch.where(in_range, blocks, table[:, :1])
        offsets = (pos % block_size)[None, :].expand_as(blocks)
        rel = pos[None, None, :] - self.bases[:, None, None]  # [R, 1, L] node index of a key
        bits = (self.masks[:, :, None] >> rel.clamp(0, 63)) & 1  # [R, W, L]
        mask = (rel < 0) | ((bits == 1) & (rel < width))
        mask = mask & in_range[:, None, :] & self.valid[:, :, None]
        mask[:, :, 0] |= ~self.valid  # padding rows see one key (no NaN); never read back
        q_rows = self.starts[:, None] + torch.where(self.valid, self.node_index, 0)
        return blocks, offsets, mask[:, None], q_rows
