"""What a tree-drafting proposer hands the runner for the next step.

vLLM carries the draft tokens themselves ([B, K], cut per request by the scheduler); a
:class:`Proposal` says how many of each request's K are real and, for requests that drafted a
tree, how the nodes hang together. A runner adapter's verifier reads it twice: when vLLM takes
the drafts (cut each request's list to its length) and when the next step's inputs are
prepared (each scheduled tree's parents), after which it is spent.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Proposal:
    """One propose()'s drafts, per request id."""

    lengths: dict[str, int]  # drafts to keep: a tree's nodes, a chain's tokens, or 0
    parents: dict[str, np.ndarray]  # tree requests only: node parents, root first (-1)
