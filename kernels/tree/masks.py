"""The row masks the tree kernels read: one int64 per query row, bit j for node j.

A tree is at most 64 nodes, so each row's ancestors fit one int64 (one load in the kernel),
where a dense [Q, prefix + Q] mask would be all ones over the prefix. Built from parent lists
in depth rounds of gathers: R x 64 integers a step, not worth a kernel launch.
"""

from __future__ import annotations

import torch


def ancestor_masks(parents: torch.Tensor) -> torch.Tensor:
    """[R, N] parents (node 0 the root with parent -1; node i's parent < i; -1 past a tree's
    nodes) -> [R, N] int64 rows, bit j set when node j is node i or one of its ancestors."""
    n = parents.shape[1]
    bits = (torch.ones_like(parents) << torch.arange(n, device=parents.device)).expand_as(parents)
    masks = bits.clone()
    up = parents
    while bool((up >= 0).any()):  # one level per round: at most the tree's depth rounds
        has_up, safe = up >= 0, up.clamp(min=0)
        masks = masks | torch.where(has_up, torch.gather(bits, 1, safe), 0)
        up = torch.where(has_up, torch.gather(parents, 1, safe), up)
    return masks
