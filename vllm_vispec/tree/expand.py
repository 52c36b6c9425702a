"""EAGLE-2's dynamic tree: expand the best nodes level by level, then keep the best overall.

The root's ``top_k`` children come from the draft's first pass. Each further draft pass runs
the current frontier (``top_k`` nodes per request), proposes ``top_k`` children for each, and
keeps the ``top_k`` children with the best cumulative log-probability as the next frontier.
Finally the ``num_nodes`` best of all proposed candidates become the tree. A child's cumulative
log-probability never exceeds its parent's, and ties go to the shallower node, so the chosen
set always holds every chosen node's parent; so does the part of it above a confidence floor
(``min_prob``), which sizes each request's tree by how sure the draft is. Drafts are
deterministic top-k, which is what makes target-only sampling at verification lossless.

Trees leave in depth-first order, best child first: every node follows its parent (vLLM's
truncation of a draft list keeps whole ancestor chains), and when the target accepts the
draft's top-1 chain the accepted nodes are already contiguous.
"""

from __future__ import annotations

import numpy as np
import torch


class Expansion:
    """The candidates of one propose() for a batch of requests.

    Nodes the draft runs (frontier nodes) get a draft-KV slot each: pass ``p`` (0-based) writes
    frontier node ``f`` to slot ``p * top_k + f`` past the request's last drafted position;
    :attr:`frontier_masks` are their ancestor rows over those slots (bit = slot).
    """

    def __init__(self, root_logprobs: torch.Tensor, top_k: int) -> None:
        """``root_logprobs`` [B, V]: the draft's log-probabilities after the request's last
        token (its first pass)."""
        self.top_k = top_k
        self.batch = root_logprobs.shape[0]
        scores, tokens = root_logprobs.float().topk(top_k, dim=-1)
        device = root_logprobs.device
        self.tokens = [tokens]
        self.scores = [scores]
        self.parents = [torch.full_like(tokens, -1)]
        self.depths = [torch.ones_like(tokens)]
        self.frontier = torch.arange(top_k, device=device).expand(self.batch, top_k)
        self.frontier_scores = scores
        self.frontier_masks = torch.zeros_like(tokens)  # set by next_pass()
        self.frontier_parent = torch.zeros_like(tokens)  # set by grow()
        self.passes = 0
        self._count = top_k

    def next_pass(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens [B, top_k] and ancestor rows [B, top_k] (int64) of the frontier to run next."""
        k, p = self.top_k, self.passes
        slots = p * k + torch.arange(k, device=self.frontier.device)
        self.frontier_masks = self.frontier_masks | (torch.ones_like(self.frontier) << slots)
        tokens = torch.gather(self._all("tokens"), 1, self.frontier)
        return tokens, self.frontier_masks

    def grow(self, logprobs: torch.Tensor) -> None:
        """``logprobs`` [B * top_k, V]: the draft's output for the frontier of next_pass()."""
        b, k = self.batch, self.top_k
        child_lp, child_tokens = logprobs.float().view(b, k, -1).topk(k, dim=-1)  # [B, k, k]
        cum = (self.frontier_scores[:, :, None] + child_lp).view(b, k * k)
        parents = self.frontier[:, :, None].expand(b, k, k).reshape(b, k * k)
        depth = torch.gather(self._all("depths"), 1, self.frontier) + 1
        self.tokens.append(child_tokens.view(b, k * k))
        self.scores.append(cum)
        self.parents.append(parents)
        self.depths.append(depth[:, :, None].expand(b, k, k).reshape(b, k * k))
        best_scores, best = cum.topk(k, dim=-1)
        # The new frontier inherits its parents' ancestor rows; own bits are set by next_pass.
        self.frontier_parent = best // k  # [B, k] which node of the pass just run
        self.frontier_masks = torch.gather(self.frontier_masks, 1, self.frontier_parent)
        self.frontier = self._count + best
        self.frontier_scores = best_scores
        self._count += k * k
        self.passes += 1

    def _all(self, name: str) -> torch.Tensor:
        return torch.cat(getattr(self, name), dim=1)

    def can_reach(self, min_logprob: float) -> bool:
        """Whether a child of some frontier node could score ``min_logprob`` or more (a child
        never scores above its parent)."""
        return bool((self.frontier_scores >= min_logprob).any())

    def select(
        self, num_nodes: int, min_logprob: float = -float("inf")
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The best ``num_nodes`` candidates per request, depth-first, best child first; with
        ``min_logprob``, only those scoring at least that (the best one always).

        Returns tokens [B, num_nodes], parents [B, num_nodes + 1] (index 0 is the root,
        parent -1; node i >= 1 is token i - 1 and its parent index is < i) and each request's
        node count [B]; past it tokens are 0 and parents -1.
        """
        scores, depths = self._all("scores"), self._all("depths")
        by_depth = torch.sort(depths, dim=1, stable=True).indices
        order = torch.sort(torch.gather(scores, 1, by_depth), dim=1, descending=True, stable=True)
        chosen = torch.gather(by_depth, 1, order.indices)[:, :num_nodes].cpu().numpy()
        kept = (order.values[:, :num_nodes] >= min_logprob).sum(dim=1).clamp(min=1).cpu().numpy()
        tokens, parents = self._all("tokens").cpu().numpy(), self._all("parents").cpu().numpy()
        out_tokens = np.zeros((self.batch, num_nodes), dtype=np.int64)
        out_parents = np.full((self.batch, num_nodes + 1), -1, dtype=np.int64)
        for b in range(self.batch):
            # chosen[b] is best-first, so each node's children list is best-first as well; a
            # prefix of it holds every member's parent (scores never rise with depth).
            children: dict[int, list[int]] = {}
            for c in chosen[b, : kept[b]]:
                children.setdefault(int(parents[b, c]), []).append(int(c))
            stack, index = list(reversed(children.get(-1, []))), {-1: 0}
            n = 0
            while stack:
                c = stack.pop()
                n += 1
                index[c] = n
                out_tokens[b, n - 1] = tokens[b, c]
                out_parents[b, n] = index[int(parents[b, c])]
                stack.extend(reversed(children.get(c, [])))
            assert n == kept[b], "the chosen candidates must be closed under parents"
        return out_tokens, out_parents, kept
