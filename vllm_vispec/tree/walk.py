"""Tree verification: which drafted nodes the target accepts.

At every node the target picks one token from its own distribution there (greedy: its argmax;
sampling: one draw from its processed probabilities). The walk starts at the root and descends
while the picked token is one of the node's children; the last pick (a non-child, or the pick
at a leaf) is the bonus token. Picking first and then checking membership is SGLang's
target-only tree sampling and EAGLE-2's ``evaluate_posterior``: with a deterministic draft
(top-k children) every emitted token is a draw from the target's distribution given the
accepted prefix, so sampled output keeps the target's distribution and greedy output is the
target's greedy output.
"""

from __future__ import annotations

import torch


def node_depths(parents: torch.Tensor) -> torch.Tensor:
    """[R, N] parents -> [R, N] depth of each node (the root 0)."""
    depth = torch.zeros_like(parents)
    for i in range(1, parents.shape[1]):
        p = parents[:, i]
        depth[:, i] = torch.where(p >= 0, depth.gather(1, p.clamp(min=0)[:, None])[:, 0] + 1, 0)
    return depth


def walk_tree(
    parents: torch.Tensor, tokens: torch.Tensor, num_nodes: torch.Tensor, picks: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Accept a path in each tree.

    Args:
        parents: [R, N] as for :func:`ancestor_masks`.
        tokens: [R, N] each node's drafted token (the root's is ignored).
        num_nodes: [R] nodes in each tree, the root included (rows past it are ignored).
        picks: [R, N] the token the target picks at each node.

    Returns:
        output tokens [R, N] (the accepted nodes' tokens then the bonus; -1 after) and the
        accepted path [R, N] (node indices starting with the root, -1 after); a tree whose
        root's pick is no child yields one token and the path [0].
    """
    r, n = parents.shape
    valid = torch.arange(n, device=parents.device)[None, :] < num_nodes[:, None]
    out = torch.full_like(tokens, -1)
    path = torch.full_like(parents, -1)
    node = torch.zeros(r, dtype=parents.dtype, device=parents.device)
    alive = torch.ones(r, dtype=torch.bool, device=parents.device)
    rows = torch.arange(r, device=parents.device)
    for step in range(n):
        pick = picks[rows, node]
        out[:, step] = torch.where(alive, pick, out[:, step])
        path[:, step] = torch.where(alive, node, path[:, step])
        child = valid & (parents == node[:, None]) & (tokens == pick[:, None])
        child[:, 0] = False
        alive = alive & child.any(dim=1)
        if not bool(alive.any()):
            break
        node = torch.where(alive, child.int().argmax(dim=1).to(node.dtype), node)
    return out, path
